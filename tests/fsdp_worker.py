"""FSDP2 on CPU, forced: `torchrun --nproc_per_node N tests/fsdp_worker.py step OUT` or `... train OUTPUT_DIR STEPS [--resume]`.

accelerate runs FSDP only on GPUs: on CPU it turns an `fsdp_plugin` into plain DDP without a word (its state sets
DistributedType.FSDP only for MULTI_GPU/NPU/XPU/...). torch's own FSDP2 (`fully_shard`) does run on CPU with gloo,
so these workers set accelerate's shared state to FSDP by hand before preparing: the models are then really
sharded (DTensor parameters, each process holding 1/N), and save_state/load_state take their FSDP paths.

    step   one PPO update on the fixed batch of dp_worker (compare: 1 process without FSDP)
    train  the Trainer on configs/toy.yaml with sharded checkpoints every step
"""

import sys

from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def fsdp_accelerator(state_dict_type: str = "SHARDED_STATE_DICT") -> Accelerator:
    acc = Accelerator(cpu=True)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type=state_dict_type, reshard_after_forward=True)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    return acc


def step(out: str) -> None:
    from tests.dp_worker import main

    main(out, accelerator=fsdp_accelerator())


def train(out: str, steps: int, resume: bool) -> None:
    from red_rlhf.config import load_config
    from red_rlhf.training.trainer import Trainer

    cfg = load_config("configs/toy.yaml", ["--train.log_with=", "--train.save_every=1", "--data.eval_size=0",
                                           f"--train.steps={steps}", f"--train.output_dir={out}"])
    trainer = Trainer(cfg, accelerator=fsdp_accelerator())
    sharded = type(next(trainer.policy.parameters())).__name__
    history = trainer.train(resume=resume)
    if trainer.acc.is_main_process:
        print("parameters:", sharded, "steps:", [m["step"] for m in history])


if __name__ == "__main__":
    from red_rlhf.cli import exit_distributed

    if sys.argv[1] == "step":
        step(sys.argv[2])
    else:
        train(sys.argv[2], int(sys.argv[3]), "--resume" in sys.argv)
    exit_distributed(0)  # skip the interpreter's teardown, which gloo can abort (see exit_distributed)
