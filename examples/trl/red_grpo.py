"""RED per-token rewards in TRL's GRPOTrainer: the usual TRL GRPO script with REDGRPOConfig / REDGRPOTrainer.

    accelerate launch examples/trl/red_grpo.py --config examples/trl/red_grpo.yaml

Needs `pip install -e ".[trl]"` (and vLLM for --use_vllm). Not run by this project on a GPU (README "Using RED
from TRL" says what was run). The reward model comes from --red_reward_model (or red_reward_function /
red_reward_sources), never from reward_funcs.
"""

from datasets import load_dataset
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from red_rlhf.integrations.trl import REDGRPOConfig, REDGRPOTrainer


def main(argv=None) -> None:
    script, training, model = TrlParser((ScriptArguments, REDGRPOConfig, ModelConfig)).parse_args_and_config(argv)
    dataset = load_dataset(script.dataset_name, name=script.dataset_config, split=script.dataset_train_split)
    training.model_init_kwargs = {"dtype": model.dtype, **(training.model_init_kwargs or {})}
    trainer = REDGRPOTrainer(model=model.model_name_or_path, args=training, train_dataset=dataset,
                             peft_config=get_peft_config(model))
    trainer.train()
    trainer.save_model(training.output_dir)


if __name__ == "__main__":
    main()
