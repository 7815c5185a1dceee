"""Run verl 0.9.1's own PPO trainer (`RayPPOTrainer.fit()`, the legacy v0 loop) on CPU in one process.

Everything on the training path is verl's: the trainer loop, `ActorRolloutRefWorker` (FSDP2 actor and reference)
and the critic's `TrainingWorker` with their engines, losses and optimizers, `RLHFDataset`, the agent loop
(`AgentLoopWorker`, single-turn), the reward loop (`RewardLoopWorker`, which loads the RED manager through
`reward.reward_manager.source=importlib`), `apply_kl_penalty`, `compute_advantage` and the weight sync from the
actor engine to the rollout (`ActorRolloutRefWorker.update_weights`, checkpoint engine "naive").

What stands in for the GPU machinery, each with the verl 0.9.1 line that forces it (paths under site-packages/verl):

- a CPU platform (`CPUPlatform`, installed with verl's own `set_platform`): verl knows nvidia/huawei/amd only and
  falls back to nvidia when none is found (plugin/platform/platform_manager.py:113-117), i.e. to `torch.cuda`.
- `VERL_ENGINE_DEVICE=cuda`: the FSDP engines are registered for the devices cuda and npu only
  (workers/engine/fsdp/transformer_impl.py:1143, :1594); this verl setting (workers/engine/base.py:405-406) picks them.
- the default process group is made here, gloo, world size 1: verl would ask for "cpu:gloo,cpu:gloo"
  (utils/distributed.py:89), which names the cpu device twice.
- workers live in this process (`LocalWorkerGroup`, `LocalActor`): verl's worker groups place Ray actors in placement
  groups whose bundles ask for a GPU each (single_controller/ray/base.py:146-148) from a pool
  that checks the GPUs available (:208-211, :238-241). Method calls still go
  through verl's dispatch/collect code and Ray's object store (`ray.put`/`ray.get`), as they do between processes.
- the agent-loop and reward-loop workers are built in this process too (`LocalAgentLoopManager`, selected by verl's
  `actor_rollout_ref.rollout.agent.agent_loop_manager_class` setting; `LocalRewardLoopManager`): verl makes them Ray
  actors (experimental/agent_loop/agent_loop.py:1208-1227, experimental/reward_loop/reward_loop.py:324-341), each a
  new Python process that imports torch and verl again.
- generation by Hugging Face `generate` (`HFRollout`, registered as rollout "hf"; `LocalLLMServerManager`): verl's
  rollouts are vLLM, SGLang and TensorRT-LLM servers (workers/rollout/base.py:89-93, workers/rollout/replica.py:
  388-390), which need a GPU. The weights reach it through verl's own naive sync (engine_workers.py:727-808:
  `get_per_tensor_param` -> `rollout.update_weights`), which `HFRollout.update_weights` checks name by name.
- no served copy of the reward model (`ServedRewardModelStandIn`): with `reward.reward_model.enable=True` verl starts
  a vLLM/SGLang server for `reward.reward_model.model_path` (experimental/reward_loop/reward_loop.py:301-303,
  reward_model.py:49-91) that the RED manager never queries.
- FSDP2's CPU offload without pinned memory for the reference model (`unpinned_offload_policy`): verl pins it
  (workers/engine/fsdp/transformer_impl.py:462), and pinning needs an accelerator.
- the critic's attention: verl loads the value model with `attn_implementation="flash_attention_2"` whatever the
  config says (utils/model.py:649, from workers/engine/fsdp/transformer_impl.py:300); `load_valuehead_model` here
  loads the same class with the config's attention (eager, set by `actor_rollout_ref.model.override_config` and
  `critic.model.override_config`, workers/config/model.py:185).

How they are put in place: through verl's own settings where it has one (`set_platform`, `VERL_ENGINE_DEVICE`,
`agent_loop_manager_class`, the rollout registry, `cpu_overrides()`); else by swapping a name in a verl module for
the duration of the run (`stand_ins()`, restored on exit): `LLMServerManager` and the `RewardLoopManager` that
`RayPPOTrainer.init_workers` looks up by name (trainer/ppo/ray_trainer.py:951, :910), `RewardModelManager`,
`load_valuehead_model`, `CPUOffloadPolicy`, and `is_trl_available` in verl's model patches (see `stand_ins`).
Nothing in torch or transformers is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import threading
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import ray
import torch
from omegaconf import OmegaConf, open_dict

import verl.experimental.reward_loop as reward_loop_pkg
import verl.experimental.reward_loop.reward_loop as reward_loop_module
import verl.models.transformers.monkey_patch as verl_monkey_patch
import verl.trainer.ppo.ray_trainer as ray_trainer
import verl.utils.model as verl_model_utils
import verl.workers.engine.fsdp.transformer_impl as fsdp_engine
import verl.utils.tracking as verl_tracking
from verl.experimental.agent_loop.agent_loop import AgentLoopManager, AgentLoopWorker
from verl.experimental.reward_loop.reward_loop import RewardLoopManager, RewardLoopWorker
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform import platform_manager
from verl.single_controller.ray.base import RayResourcePool, RayWorkerGroup, _unwrap_ray_remote
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import TokenOutput

HERE = __name__  # the module path verl's config settings load classes from


# ---------------------------------------------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------------------------------------------

def _noop(*args, **kwargs):
    return None


# verl calls these through `get_torch_device()` (utils/device.py:105-111); torch.cpu has a few of them.
CPU_DEVICE = SimpleNamespace(
    is_available=lambda: True, current_device=lambda: "cpu", device_count=lambda: 1, set_device=_noop,
    synchronize=_noop, manual_seed=torch.manual_seed, manual_seed_all=torch.manual_seed, empty_cache=_noop,
    memory_allocated=lambda *a, **k: 0, memory_reserved=lambda *a, **k: 0, max_memory_allocated=lambda *a, **k: 0,
    max_memory_reserved=lambda *a, **k: 0, reset_peak_memory_stats=_noop, mem_get_info=lambda *a, **k: (0, 0),
    get_device_name=lambda *a, **k: "cpu", is_initialized=lambda: True, ipc_collect=_noop,
)


class CPUPlatform(PlatformBase):
    """verl's platform interface (plugin/platform/platform_base.py) for a machine without an accelerator."""

    device_name = "cpu"
    vendor_name = "cpu"
    device_module = CPU_DEVICE

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:
        # verl moves modules to `get_device_id()` (utils/fsdp_utils.py:507); torch.cpu.current_device() says "cpu"
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


# ---------------------------------------------------------------------------------------------------------------
# Workers in this process
# ---------------------------------------------------------------------------------------------------------------

class _Method:
    def __init__(self, actor: "LocalActor", name: str):
        self.actor, self.name = actor, name

    def remote(self, *args, **kwargs):
        """Like a Ray actor call: ObjectRef arguments are resolved, the result goes to the object store."""
        args = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
        kwargs = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in kwargs.items()}
        return ray.put(self.actor.call(self.name, *args, **kwargs))


class LocalActor:
    """A Ray-actor-like handle on an object in this process. Coroutine methods run on the handle's own event loop
    thread, as an async Ray actor runs them on its own loop."""

    def __init__(self, instance):
        self.instance = instance
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="local-actor")
        self._thread.start()

    def call(self, name: str, *args, **kwargs):
        result = getattr(self.instance, name)(*args, **kwargs)
        if inspect.isawaitable(result):
            return asyncio.run_coroutine_threadsafe(_awaited(result), self._loop).result()
        return result

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Method(self, name)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


async def _awaited(awaitable):
    return await awaitable


class LocalWorkerGroup(RayWorkerGroup):
    """verl's RayWorkerGroup with its one worker built in this process instead of a GPU placement group."""

    def _init_with_resource_pool(self, resource_pool, ray_cls_with_init, bin_pack, detached, worker_env=None):
        self.resource_pool = resource_pool
        cls = _unwrap_ray_remote(ray_cls_with_init.cls)
        self._workers = [LocalActor(cls(*ray_cls_with_init.args, **ray_cls_with_init.kwargs))]
        self._worker_names = ["local"]
        self._world_size = 1
        self._master_addr, self._master_port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]

    def _is_worker_alive(self, worker) -> bool:
        return True

    @property
    def local(self):
        """The worker object itself (verl's colocated WorkerDict)."""
        return self._workers[0].instance


def actor_rollout_worker(worker_group: LocalWorkerGroup):
    """verl's ActorRolloutRefWorker in the group: role "actor_rollout_ref", or "actor_rollout" when there is no
    reference policy (trainer/main_ppo_v0.py:48-52)."""
    [worker] = [w for role, w in worker_group.local.worker_dict.items() if role.startswith("actor_rollout")]
    return worker


class LocalResourcePoolManager:
    """verl's ResourcePoolManager interface (single_controller/ray/base.py:185-224): one pool of one worker, no
    placement group (LocalWorkerGroup never asks it for one)."""

    def __init__(self):
        self.resource_pool_dict = {"global_pool": RayResourcePool([1], use_gpu=False, name_prefix="local")}

    def create_resource_pool(self) -> None:
        return None

    def get_resource_pool(self, role):
        return self.resource_pool_dict["global_pool"]

    def get_n_gpus(self) -> int:
        return 1


# ---------------------------------------------------------------------------------------------------------------
# Generation: Hugging Face generate in place of the vLLM/SGLang server
# ---------------------------------------------------------------------------------------------------------------

class HFRollout(BaseRollout):
    """The rollout engine ActorRolloutRefWorker builds (engine_workers.py:667-670), as a Hugging Face model."""

    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh)
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(self.model_config.local_path).eval().requires_grad_(False)
        self.tokenizer = self.model_config.tokenizer
        self.synced_steps: list[int | None] = []  # one entry per weight sync, for tests

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        """Copy every tensor verl's engine exports (get_per_tensor_param) into the model; all names must match."""
        params = dict(self.model.named_parameters())
        seen = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"HFRollout: verl sent weight {name!r}, which the generation model does not have")
            tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            params[name].data.copy_(tensor.to(params[name].dtype))
            seen.add(name)
        missing = set(params) - seen
        tied = {n for n in missing if n == "lm_head.weight" and self.model.config.tie_word_embeddings}
        if missing - tied:
            raise KeyError(f"HFRollout: verl's weight sync left {sorted(missing - tied)} unset")
        self.synced_steps.append(kwargs.get("global_steps"))

    def generate(self, prompt_ids: list[int], sampling_params: dict) -> TokenOutput:
        """One response, sampled as verl's agent loop asks (temperature, top_p, top_k; -1 = off)."""
        config = self.config
        temperature = float(sampling_params.get("temperature", 1.0))
        top_k = int(sampling_params.get("top_k", -1))
        kwargs = dict(do_sample=temperature > 0, max_new_tokens=config.response_length,
                      eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=float(sampling_params.get("top_p", 1.0)),
                          top_k=top_k if top_k > 0 else 0)
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        response = out[0, ids.shape[1]:].tolist()
        if self.tokenizer.eos_token_id in response:  # generate pads after EOS; keep the EOS
            response = response[: response.index(self.tokenizer.eos_token_id) + 1]
        return TokenOutput(token_ids=response, log_probs=None, stop_reason="completed", num_preempted=0)


class LocalLLMClient:
    """verl's LLMServerClient interface (workers/rollout/llm_server.py:99-168) on an HFRollout in this process."""

    def __init__(self, rollout: HFRollout):
        self.rollout = rollout

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        return self.rollout.generate(list(prompt_ids), sampling_params)


class LocalLLMServerManager:
    """verl's LLMServerManager interface (workers/rollout/llm_server.py:354-550) with no server: the client calls
    the rollout that verl's actor worker built. No replicas: the weight sync goes straight to that rollout."""

    def __init__(self, config, worker_group: LocalWorkerGroup = None, rollout_resource_pool=None, **kwargs):
        self.config = config
        self.rollout: HFRollout = actor_rollout_worker(worker_group).rollout

    @classmethod
    def create(cls, *args, **kwargs) -> "LocalLLMServerManager":
        return cls(*args, **kwargs)

    def get_client(self, *args, **kwargs) -> LocalLLMClient:
        return LocalLLMClient(self.rollout)

    def get_replicas(self) -> list:
        return []

    def start_profile(self, **kwargs):
        return None

    def stop_profile(self):
        return None


class LocalAgentLoopManager(AgentLoopManager):
    """verl's AgentLoopManager with its AgentLoopWorkers built in this process (config:
    actor_rollout_ref.rollout.agent.agent_loop_manager_class)."""

    async def _init_agent_loop_workers(self):
        self.agent_loop_workers = [
            LocalActor(AgentLoopWorker(self.config, self.llm_client, self.teacher_client,
                                       self.reward_loop_worker_handles))
            for _ in range(self.rollout_config.agent.num_workers)
        ]

    def close(self) -> None:
        for worker in self.agent_loop_workers:
            worker.close()


# ---------------------------------------------------------------------------------------------------------------
# Reward: verl's reward loop in this process, no served reward model
# ---------------------------------------------------------------------------------------------------------------

class ServedRewardModelStandIn:
    """In place of verl's RewardModelManager (experimental/reward_loop/reward_model.py:27-119), which serves
    `reward.reward_model.model_path` with vLLM/SGLang; the RED manager scores with its own reward sources."""

    started = 0

    def __init__(self, config, resource_pool=None):
        type(self).started += 1
        self.config = config

    def get_router_address(self):
        return None

    def wake_up(self):
        return None

    def sleep(self):
        return None


class LocalRewardLoopManager(RewardLoopManager):
    """verl's RewardLoopManager with its RewardLoopWorkers built in this process."""

    def _init_reward_loop_workers(self):
        self.reward_loop_workers = [LocalActor(RewardLoopWorker(self.config, self.reward_router_address))
                                    for _ in range(self.config.reward.num_workers)]

    def close(self) -> None:
        for worker in self.reward_loop_workers:
            worker.close()


def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
    """verl's utils/model.py:641 without its hard-coded flash_attention_2 (:649): the config's attention."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(local_path, torch_dtype=torch_dtype, config=model_config,
                                                           trust_remote_code=trust_remote_code)


def unpinned_offload_policy(pin_memory: bool = True, **kwargs):
    """FSDP2's CPUOffloadPolicy without pinned memory: verl asks for pin_memory=True for every forward-only model
    (the reference policy, workers/engine/fsdp/transformer_impl.py:462), and pinning needs an accelerator."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    return CPUOffloadPolicy(pin_memory=False, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Config and run
# ---------------------------------------------------------------------------------------------------------------

def cpu_overrides(steps: int = 2, batch: int = 4, response_length: int = 16, prompt_length: int = 64) -> list[str]:
    """verl settings for a tiny CPU run; each is an ordinary verl config key."""
    return [
        "trainer.device=cpu", "trainer.n_gpus_per_node=1", "trainer.nnodes=1", f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100", "trainer.logger=[console]", "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1", "trainer.balance_batch=false", "trainer.critic_warmup=0",
        f"data.train_batch_size={batch}", f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}", "data.dataloader_num_workers=0", "data.shuffle=false",
        "actor_rollout_ref.actor.strategy=fsdp2", "critic.strategy=fsdp2",
        "+actor_rollout_ref.model.override_config.attn_implementation=eager",
        "+critic.model.override_config.attn_implementation=eager",
        "actor_rollout_ref.model.use_remove_padding=false", "critic.model.use_remove_padding=false",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.optim.lr=1e-3", "critic.optim.lr=1e-3",
        f"critic.ppo_mini_batch_size={batch}", "critic.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.mode=async",
        f"actor_rollout_ref.rollout.response_length={response_length}",
        "actor_rollout_ref.rollout.calculate_log_probs=false", "actor_rollout_ref.rollout.free_cache_engine=false",
        "actor_rollout_ref.rollout.checkpoint_engine.backend=naive", "actor_rollout_ref.rollout.agent.num_workers=1",
        f"+actor_rollout_ref.rollout.agent.agent_loop_manager_class={HERE}.LocalAgentLoopManager",
        "reward.num_workers=1", "reward.reward_kwargs.device=cpu",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cpu_verl():
    """The process-wide setup: Ray (object store only), the CPU platform, a gloo process group of one, worker env."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "VERL_ENGINE_DEVICE": "cuda", "TOKENIZERS_PARALLELISM": "false"}
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    made_group = not torch.distributed.is_initialized()
    with mock.patch.dict(os.environ, env):
        if made_group:
            torch.distributed.init_process_group("gloo", rank=0, world_size=1,
                                                 init_method=f"tcp://127.0.0.1:{env['MASTER_PORT']}")
        previous = platform_manager._current_platform
        platform_manager.set_platform(CPUPlatform())
        try:
            yield
        finally:
            platform_manager._current_platform = previous  # what the rest of the session had
            if made_group and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            if started_ray:
                ray.shutdown()


@contextmanager
def stand_ins(recorder: "Recorder | None" = None):
    """The module-level substitutions (restored on exit) and the rollout registration."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(rollout_base._ROLLOUT_REGISTRY, {("hf", "async"): f"{HERE}.HFRollout"}))
        stack.enter_context(mock.patch.object(ray_trainer, "LLMServerManager", LocalLLMServerManager))
        stack.enter_context(mock.patch.object(reward_loop_pkg, "RewardLoopManager", LocalRewardLoopManager))
        stack.enter_context(mock.patch.object(reward_loop_module, "RewardModelManager", ServedRewardModelStandIn))
        stack.enter_context(mock.patch.object(verl_model_utils, "load_valuehead_model", load_valuehead_model))
        stack.enter_context(mock.patch.object(fsdp_engine, "CPUOffloadPolicy", unpinned_offload_policy))
        # verl imports trl's AutoModelForCausalLMWithValueHead for every model it builds whenever trl is importable
        # (models/transformers/monkey_patch.py:352-356), and trl 1.16 (`make trl`) no longer has it: with both in one
        # environment verl cannot build any model. test_verl_loop.py::test_installed_trl_lets_verl_build_models
        # reports that conflict by itself; here trl is hidden from that one check so the loop is still tested.
        stack.enter_context(mock.patch.object(verl_monkey_patch, "is_trl_available", lambda: False))
        if recorder is not None:
            stack.enter_context(mock.patch.object(ray_trainer, "compute_advantage", recorder.compute_advantage))
            stack.enter_context(mock.patch.object(verl_tracking.Tracking, "log", recorder.log))
        yield


class Recorder:
    """What fit() computed, read at two points: verl's compute_advantage (called by name from fit,
    trainer/ppo/ray_trainer.py:1667) and the metrics fit logs through Tracking.log (:1802)."""

    KEYS = ("prompts", "responses", "attention_mask", "response_mask", "token_level_scores", "token_level_rewards",
            "values", "advantages", "returns")

    def __init__(self):
        self.steps: list[dict[str, Any]] = []
        self.metrics: list[dict[str, float]] = []
        self._compute_advantage = ray_trainer.compute_advantage
        self._log = verl_tracking.Tracking.log
        recorder = self

        def compute_advantage(data, *args, **kwargs):
            out = recorder._compute_advantage(data, *args, **kwargs)
            step = {k: out.batch[k].detach().clone() for k in recorder.KEYS if k in out.batch.keys()}
            step["non_tensor"] = {k: v.copy() for k, v in out.non_tensor_batch.items()}
            step["adv_estimator"] = kwargs.get("adv_estimator")
            recorder.steps.append(step)
            return out

        def log(tracking, data, step, *args, **kwargs):
            recorder.metrics.append(dict(data))
            return recorder._log(tracking, data, step, *args, **kwargs)

        self.compute_advantage, self.log = compute_advantage, log


def compose_recipe(recipe_dir: str, overrides: list[str], recipe: str = "red_ppo"):
    """A recipe of examples/verl through verl's Hydra config, as `python -m verl.trainer.main_ppo` composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=recipe_dir, version_base=None):
        return compose(config_name=recipe, overrides=overrides)


def build_trainer(config):
    """What verl's main_ppo_v0 TaskRunner.run does (trainer/main_ppo_v0.py:151-230), with the local pool and group."""
    from verl.trainer.main_ppo_v0 import BaseTaskRunner
    from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler, need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.utils.dataset.rl_dataset import collate_fn
    from verl.workers.config import HFModelConfig

    OmegaConf.resolve(config)
    runner = BaseTaskRunner()
    runner.add_actor_rollout_worker(config)
    if need_critic(config):
        runner.add_critic_worker(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    model_config: HFModelConfig = omega_conf_to_dataclass(config.actor_rollout_ref.model)
    tokenizer = model_config.tokenizer
    train = create_rl_dataset(config.data.train_files, config.data, tokenizer, None, is_train=True)
    val = create_rl_dataset(config.data.val_files, config.data, tokenizer, None, is_train=False)
    return ray_trainer.RayPPOTrainer(
        config=config, tokenizer=tokenizer, processor=None, role_worker_mapping=runner.role_worker_mapping,
        resource_pool_manager=LocalResourcePoolManager(), ray_worker_group_cls=LocalWorkerGroup,
        train_dataset=train, val_dataset=val, collate_fn=collate_fn,
        train_sampler=create_rl_sampler(config.data, train))


def trainable_weights(trainer) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the actor's and (when there is one) the critic's parameters, read from verl's engines."""
    out = {}
    critic = trainer.actor_rollout_wg.local.worker_dict.get("critic")
    for role, worker in (("actor", actor_rollout_worker(trainer.actor_rollout_wg).actor), ("critic", critic)):
        if worker is None:
            continue
        out[role] = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                     for name, p in worker.engine.module.named_parameters()}
    return out


def run_fit(config, recorder: Recorder):
    """Build verl's trainer on the stand-ins, run fit(), return (trainer, weights before, weights after)."""
    with stand_ins(recorder):
        trainer = build_trainer(config)
        trainer.init_workers()
        try:
            before = trainable_weights(trainer)
            trainer.fit()
            after = trainable_weights(trainer)
        finally:
            trainer.async_rollout_manager.close()
            trainer.reward_loop_manager.close()
            trainer.actor_rollout_wg._workers[0].close()
    return trainer, before, after
