"""The demo's pipeline (`red_rlhf.demo` lists its five stages): each stage one call in `run_demo`."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from red_rlhf.config import Config, load_config
from red_rlhf.data.prompts import read_prompts
from red_rlhf.data.sentiment import prepare
from red_rlhf.demo import DemoSettings, judge
from red_rlhf.demo.report import report_html
from red_rlhf.models.scorer import TokenRewardScorer
from red_rlhf.models.sources import HFRewardModel
from red_rlhf.report.plots import plot_run
from red_rlhf.training.reward_model import (fit_reward_model, keep_first_layers, load_backbone, read_pairs,
                                            save_reward_model, train_only_last_layers)


def _tiny_pair(cache: Path, seed: int):
    """A tiny GPT-2 policy and reward-model backbone sharing one tokenizer, saved once to the cache."""
    from red_rlhf.models.tiny import tiny_causal_lm, tiny_reward_model, tiny_tokenizer

    policy_dir = cache / "tiny-policy"
    tok = tiny_tokenizer("gpt2")
    if not (policy_dir / "config.json").is_file():
        tiny_causal_lm(tok, context=256, seed=seed).save_pretrained(policy_dir)
        tok.save_pretrained(policy_dir)
    return str(policy_dir), tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=seed, width=64), tok


def _resolve(name: str, cache: Path) -> str:
    """"smollm2" -> the packaged SmolLM2-135M-Instruct folder (converted once); anything else as given."""
    if name == "smollm2":
        from red_rlhf.models.packaged import smollm2_instruct

        return str(smollm2_instruct(cache))
    return name


def reward_model_dir(s: DemoSettings, data: Path, cache: Path) -> tuple[Path, dict]:
    """Train the reward model once per setting; later runs load it from the cache."""
    out = s.folder(cache)
    if (out / "rm_metrics.json").is_file():
        print(f"reward model found in {out} (cached)")
        return out, json.loads((out / "rm_metrics.json").read_text())
    if s.rm_backbone == "tiny":
        _, model, tok = _tiny_pair(cache, s.seed)
    else:
        backbone = _resolve(s.rm_backbone, cache)
        torch.manual_seed(s.seed)  # the new score head's random start (the "before" accuracy)
        model, tok = load_backbone(backbone)
    if s.rm_keep_layers is not None:
        keep_first_layers(model, s.rm_keep_layers)
    train = read_pairs(data / "pairs_train.jsonl")[: s.rm_pairs]
    held_out = read_pairs(data / "pairs_eval.jsonl")[: s.rm_eval_pairs]
    if s.rm_trainable_layers not in (0, None):
        train_only_last_layers(model, s.rm_trainable_layers)
    # a trunk frozen whole (0) trains the score head alone on features computed once (seconds)
    metrics = fit_reward_model(model, tok, train, held_out, head_only=s.rm_trainable_layers == 0,
                               all_positions=not s.rm_final_only, max_length=512, seed=s.seed, epochs=s.rm_epochs,
                               lr=1e-3 if s.rm_backbone == "tiny" else 1e-5, batch_size=16)
    print(f"reward model: held-out pairwise accuracy {metrics['accuracy_before']:.3f} -> {metrics['accuracy_after']:.3f} "
          f"({len(held_out)} pairs)")
    metrics.update(train_pairs=len(train), held_out_pairs=len(held_out))
    return save_reward_model(model, tok, out, metrics), metrics


def train_config(s: DemoSettings, data: Path, policy: str, rm: Path, out: Path) -> Config:
    """configs/demo.yaml with this demo's paths and seed, then the settings' own overrides ("--section.key=value",
    as on `red-rlhf train`'s command line), which win."""
    overrides = [f"--policy.name_or_path={policy}", f"--reward.model={rm}", f"--data.prompts={data / 'prompts_train.txt'}",
                 f"--train.output_dir={out / 'train'}", f"--train.seed={s.seed}"]
    if s.policy == "tiny":  # a random toy policy: full weights, its own critic, a faster critic
        overrides += ["--policy.lora_r=0", "--algo.critic_init=policy", "--algo.critic_lr=1e-3"]
    elif s.policy != s.rm_backbone:  # the critic copies the reward model's trunk only when both read the same tokens
        overrides.append("--algo.critic_init=policy")
    return load_config("demo", overrides + list(s.overrides))


def run_demo(s: DemoSettings) -> Path:
    from red_rlhf.training.trainer import Trainer

    clock = Stopwatch()
    cache, out = Path(s.cache_dir).expanduser(), Path(s.output_dir)
    train_config(s, cache, s.policy, s.folder(cache), out)  # a bad override fails here, not after stage 2 (paths unused)
    with clock("prepare"):
        data = prepare(cache, sdist=s.sdist, seed=s.seed)  # 1
    with clock("reward_model"):
        rm, rm_metrics = reward_model_dir(s, data, cache)  # 2
        policy = _tiny_pair(cache, s.seed)[0] if s.policy == "tiny" else _resolve(s.policy, cache)
    cfg = train_config(s, data, policy, rm, out)
    if (out / "train").exists():
        import shutil

        shutil.rmtree(out / "train")  # the demo always trains anew; checkpoints of `red-rlhf train` resume instead
    trainer = Trainer(cfg)
    prompts = read_prompts(str(data / "prompts_eval.txt"), "demo eval prompts")[: s.eval_prompts]
    with clock("evaluate"):
        _, before, before_rm, _ = trainer.eval_samples(prompts)  # 4 (before)
    with clock("train"):
        trainer.train()  # 3
    with clock("evaluate"):
        _, after, after_rm, after_kl = trainer.eval_samples(prompts)  # 4 (after)
        eager = "eager" if cfg.reward.scheme == "abc" else None  # ABC's heatmaps need attention weights
        reward = HFRewardModel.from_pretrained(str(rm), attn_implementation=eager, format=cfg.reward.format)
        scorer = TokenRewardScorer(reward, policy_tokenizer=trainer.tokenizer, scheme=cfg.reward.scheme)
        shown = [(p, r) for p, r in zip(prompts, after) if r.strip()][: s.heatmaps]
        heat_rows = scorer.score([p for p, _ in shown], [r for _, r in shown]) if shown else []
    summary = {
        "reward_scheme": cfg.reward.scheme, "steps": cfg.train.steps, "seed": s.seed, "rl_seed": cfg.train.seed,
        "policy": s.policy, "rm_backbone": s.rm_backbone,
        "rm_train_pairs": rm_metrics.get("train_pairs"), "rm_held_out_pairs": rm_metrics.get("held_out_pairs"),
        "rm_accuracy_before": rm_metrics["accuracy_before"], "rm_accuracy_after": rm_metrics["accuracy_after"],
        "eval_prompts": len(prompts),
        "rm_score_before": _mean(before_rm), "rm_score_after": _mean(after_rm),
        "judge_before": _mean(judge(before)), "judge_after": _mean(judge(after)),
        "kl_after": _mean(after_kl), **clock.seconds(), "wall_s": clock.total(),
    }
    curves = plot_run(cfg.train.output_dir, out / "curves.png")  # 5
    report = out / "report.html"
    report.write_text(report_html(summary, curves, prompts, before, after, before_rm, after_rm, heat_rows), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    _drop_checkpoints(Path(cfg.train.output_dir))
    print(f"report: {report}")
    return report


def _drop_checkpoints(run: Path) -> None:
    """The demo's run is finished and exported (OUTPUT_DIR/train/policy), and the demo always trains anew: its
    checkpoints (the critic and the optimisers' moments, about 1.2 GB each for the default demo) serve nothing the
    report shows, so they are removed. `red-rlhf train --config demo` keeps its checkpoints as any run does."""
    import shutil

    folder = run / "checkpoints"
    if folder.is_dir():
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder)
        print(f"removed the finished run's checkpoints ({size / 1e9:.2f} GB); the trained policy is in {run / 'policy'}")


class Stopwatch:
    """Wall seconds per named stage (a stage may be timed in several pieces)."""

    def __init__(self):
        self.start, self.stages = time.perf_counter(), {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - begin

    def seconds(self) -> dict[str, float]:
        return {f"time_{name}_s": value for name, value in self.stages.items()}

    def total(self) -> float:
        return time.perf_counter() - self.start


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
