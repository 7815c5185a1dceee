"""Every training and evaluation prompt is encoded once before training starts, so an over-long or empty
prompt is reported by file and line at start-up, not when it is first sampled steps later."""

from __future__ import annotations

from red_rlhf.config import Config, ConfigError
from red_rlhf.data.prompts import is_datasets_source, read_prompt_lines, source_options
from red_rlhf.training.rollout import PromptError, encode_prompts


def check_prompts(cfg: Config, tokenizer, shown: int = 5) -> None:
    """Raise ConfigError naming file and line of every prompt (the first `shown`) the policy cannot take."""
    files = [("data.prompts", cfg.data.prompts)]
    if cfg.data.eval_prompts is not None:
        files.append(("data.eval_prompts", cfg.data.eval_prompts))
    for field, path in files:
        problems = []
        options = source_options(cfg.data, tokenizer, eval=field == "data.eval_prompts")
        unit = "row" if is_datasets_source(path, cfg.data.messages_column) else "line"  # a dataset's rows, from 0
        for line, prompt in read_prompt_lines(path, field, **options):
            try:
                encode_prompts(tokenizer, [prompt], max_tokens=cfg.rollout.max_prompt_tokens,
                               chat_template=cfg.policy.chat_template)
            except PromptError as err:  # this prompt; a tokenizer without a chat template is a ConfigError of its own
                problems.append(f"{unit} {line}: the prompt {err.problem}")
        if problems:
            where = "the toy prompts" if path == "toy" else path
            more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
            raise ConfigError(f"{field}: {where}: " + "; ".join(problems[:shown]) + more)
