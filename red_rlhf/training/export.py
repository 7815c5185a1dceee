"""Trained models as standard Hugging Face folders: weights, tokenizer, generation config and a model card.

    OUTPUT_DIR/policy/          the policy (full model), or with LoRA its adapters (AutoPeftModelForCausalLM)
    OUTPUT_DIR/policy-merged/   with train.merge_lora: the adapters merged into the base (AutoModelForCausalLM)

Reward models from `red-rlhf train-rm` get a card too (`write_reward_model_card`): their folder is one that
AutoModelForSequenceClassification and `red-rlhf score` load alone. `push_to_hub` uploads a folder.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from red_rlhf.config import Config, reward_sources

EVAL_KEYS = ("eval_reward_mean", "eval_kl", "eval_response_length")


def generation_config(model, tokenizer, cfg: Config):
    """The sampling the policy was trained with (temperature, top_p, max_new_tokens) and its EOS / pad ids."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    gen = copy.deepcopy(base) if base is not None else GenerationConfig()
    gen.update(do_sample=True, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
               max_new_tokens=cfg.rollout.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    return gen


def last_eval(output_dir: Path) -> dict:
    """The last held-out numbers in OUTPUT_DIR/metrics.jsonl ({} when the run never evaluated)."""
    path = Path(output_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []
    evaluated = [r for r in rows if "eval_reward_mean" in r]
    return {k: evaluated[-1][k] for k in ("step", *EVAL_KEYS) if k in evaluated[-1]} if evaluated else {}


def export_policy(model, tokenizer, cfg: Config, output_dir: str | Path, steps: int, hub_api=None,
                  state_dict: dict | None = None) -> list[Path]:
    """Save the trained policy (unwrapped; a peft model with LoRA) as standard folders; push with train.push_to_hub.
    state_dict: the gathered weights when the model is sharded (FSDP: Accelerator.get_state_dict); None: the model's.

    Returns the folders written: [policy] or, with train.merge_lora, [policy, policy-merged].
    """
    out = Path(output_dir)
    lora = cfg.policy.lora_r > 0
    gen = generation_config(model.get_base_model() if lora else model, tokenizer, cfg)
    evaluation = last_eval(out)
    folders = [out / "policy"]
    _save(model, tokenizer, gen, folders[0], policy_card(cfg, steps, evaluation, adapters=lora), state_dict)
    if cfg.train.merge_lora:
        merged = copy.deepcopy(model).merge_and_unload()  # a copy: the trainer's model keeps its adapters
        folders.append(out / "policy-merged")
        _save(merged, tokenizer, gen, folders[1], policy_card(cfg, steps, evaluation, adapters=False))
    if cfg.train.push_to_hub:
        push_to_hub(folders[-1], cfg.train.push_to_hub, api=hub_api,
                    message=f"red-rlhf: {cfg.algo.algorithm} policy after {steps} steps")
    return folders


def _save(model, tokenizer, gen, folder: Path, card: str, state_dict: dict | None = None) -> None:
    """Write the folder beside (.NAME.tmp), then swap it in: the folder holds exactly the new model. Written in
    place, files of an older export that this one does not write (a LoRA run's adapter_config.json under a full
    model, an older shard) would stay, and from_pretrained would load them with the new weights."""
    import shutil

    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    gen.save_pretrained(tmp)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)  # two renames: a kill between them leaves the new export complete in .NAME.tmp
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _hub_id(name: str | None) -> str | None:
    """A name the hub metadata can link to (user/model), or None for local paths and built-in models."""
    if not name or name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1:
        return None
    return name if name not in ("toy", "tiny") else None


def _front_matter(base: str | None, library: str, tags: list[str], pipeline: str) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(base_model=_hub_id(base), library_name=library, tags=tags, pipeline_tag=pipeline)
    return f"---\n{data.to_yaml()}\n---\n"


def policy_card(cfg: Config, steps: int, evaluation: dict, adapters: bool) -> str:
    """A short model card: base model, reward sources and schemes, algorithm, steps, final held-out numbers."""
    base = cfg.policy.name_or_path
    base_text = "the built-in toy GPT-2 (red_rlhf.models.tiny.toy_policy)" if base == "toy" else f"`{base}`"
    sources = "\n".join(
        f"| {s.name} | {s.kind} | `{s.model or s.function}` | {s.scheme} | {s.weight:g}"
        f"{'' if s.limit is None else f' (limit {s.limit:g})'} |" for s in reward_sources(cfg))
    if evaluation:
        held_out = (f"At step {evaluation.get('step', steps)} on held-out prompts: mean reward "
                    f"{evaluation['eval_reward_mean']:+.4f}, KL to the reference {evaluation.get('eval_kl', float('nan')):.4f} "
                    f"per response, response length {evaluation.get('eval_response_length', float('nan')):.1f} tokens.")
    else:
        held_out = "The run did not evaluate on held-out prompts (data.eval_size 0 and no data.eval_prompts)."
    if adapters:
        load = ("from peft import AutoPeftModelForCausalLM\n"
                "model = AutoPeftModelForCausalLM.from_pretrained(PATH)  # base weights + these LoRA adapters")
        what = f"LoRA adapters (r={cfg.policy.lora_r}, alpha={cfg.policy.lora_alpha}) for {base_text}"
    else:
        load = "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(PATH)"
        what = (f"{base_text} with its LoRA adapters (r={cfg.policy.lora_r}) merged in" if cfg.policy.lora_r
                else f"{base_text}, all weights trained")
    tags = ["red-rlhf", "rlhf", cfg.algo.algorithm, *sorted({s.scheme for s in reward_sources(cfg)})]
    return _front_matter(base, "peft" if adapters else "transformers", tags, "text-generation") + f"""
# red-rlhf policy

{what[0].upper() + what[1:]}, trained with red-rlhf ({cfg.algo.algorithm.upper()}, {steps} steps, KL coefficient {cfg.kl.coef:g}
{'adaptive' if cfg.kl.adaptive else 'fixed'}, token-level rewards).

## Reward sources

| name | kind | model or function | scheme | weight |
| --- | --- | --- | --- | --- |
{sources}

Schemes: `red` spreads each source's score over the response tokens as prefix-score differences, `sparse`
puts it on the last token, `abc` spreads it by attention.

## Final held-out numbers

{held_out}

## Use

```python
{load}
```
The folder's generation_config.json holds the sampling used in training (temperature {cfg.rollout.temperature:g},
top_p {cfg.rollout.top_p:g}, max_new_tokens {cfg.rollout.max_new_tokens}).
"""


def write_reward_model_card(folder: str | Path, *, base: str, data: str, metrics: dict, how: str) -> Path:
    """The model card (README.md) of a reward model from `red-rlhf train-rm`; the weights, tokenizer and
    rm_metrics.json are saved by training.reward_model.save_reward_model. Returns the card's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if metrics.get("accuracy_before") is None:
        accuracy = f"No pairs were held out, so no accuracy was measured ({metrics['train_pairs']} training pairs)."
    else:
        accuracy = (f"Held-out pairwise accuracy: {metrics['accuracy_before']:.3f} before training, "
                    f"{metrics['accuracy_after']:.3f} after ({metrics['held_out_pairs']} held-out pairs, "
                    f"{metrics['train_pairs']} training pairs).")
    base_text = "a tiny GPT-2 built from a config (`tiny`)" if base == "tiny" else f"`{base}`"
    card = _front_matter(base, "transformers", ["red-rlhf", "reward-model", "bradley-terry"],
                         "text-classification") + f"""
# red-rlhf reward model

A causal reward model (a decoder with a one-logit score head) trained from {base_text} on preference pairs
from `{Path(data).name}` with the Bradley-Terry loss ({how}). Its score after every token is the prefix score
that red-rlhf's RED scheme turns into per-token rewards.

{accuracy}

## Use

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(PATH)  # logits[:, 0] is the reward
tokenizer = AutoTokenizer.from_pretrained(PATH)
```
Per-token rewards: `red-rlhf score --reward-model PATH --prompt "..." --response "..."`.
"""
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder / "README.md"


def push_to_hub(folder: str | Path, repo_id: str, api=None, message: str = "red-rlhf export") -> object:
    """Create the model repo (if needed) and upload the folder. `api`: a huggingface_hub.HfApi (default: a new one,
    which reads the token from the environment or `hf auth login`)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
