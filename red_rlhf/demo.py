"""`red-rlhf demo`: human preference data -> reward model -> RED-PPO -> evaluation -> report.html.

1 prepare     preference pairs and prompts from human movie-review ratings (cached; see sentiment_data)
2 reward      a Bradley-Terry reward model on those pairs (cached per backbone)
3 train       PPO on token rewards (reward.scheme red by default; sparse / abc for comparison)
4 evaluate    held-out prompts before and after: the training reward model and an independent judge (VADER)
5 report      curves, a before/after table and per-token reward heatmaps in one self-contained page
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from red_rlhf.config import Config, validate
from red_rlhf.data.prompts import read_prompts
from red_rlhf.report.plots import plot_run
from red_rlhf.report.heatmap import heatmap_rows_html
from red_rlhf.training.reward_model import (keep_first_layers, load_backbone, read_pairs, score_head_ticks,
                                  train_only_last_layers, train_reward_model, train_score_head)
from red_rlhf.models.sources import HFRewardModel
from red_rlhf.models.scorer import TokenRewardScorer
from red_rlhf.data.sentiment import prepare


@dataclass
class DemoSettings:
    cache_dir: str = "~/.cache/red-rlhf"
    output_dir: str = "runs/demo"
    policy: str = "smollm2"  # HF causal LM name/path, "smollm2" (packaged SmolLM2-135M-Instruct) or "tiny" (noise)
    rm_backbone: str = "smollm2"  # HF decoder name/path for the reward model, "smollm2" or "tiny"
    reward_scheme: str = "red"
    steps: int = 40
    rm_pairs: int | None = 800  # use only the first N training pairs (None: all)
    rm_keep_layers: int | None = 20  # cut the reward model's trunk to its first N blocks (None: keep all)
    rm_trainable_layers: int | None = 0  # 0: score head only (frozen trunk); N: last N blocks + head; None: all
    rm_all_positions: bool = True  # train on every position after chosen/rejected diverge, not only the last
    rm_epochs: int = 1  # when blocks train (rm_trainable_layers != 0)
    rm_eval_pairs: int = 256  # held-out pairs for the accuracy check
    policy_lr: float = 1e-3  # LoRA adapters (or the whole tiny policy)
    temperature: float = 0.7  # sampling (and log-prob) temperature of the policy
    eval_prompts: int = 64
    heatmaps: int = 4
    sdist: str | None = None  # a local vaderSentiment sdist instead of pip download
    seed: int = 0  # data split, reward model and (unless rl_seed) the RL run
    rl_seed: int | None = None  # the RL run alone (prompt order, sampling, LoRA init): same data and reward model


def judge(texts: list[str]) -> list[float]:
    """The independent judge: VADER's compound sentiment (-1..1), a lexicon scorer no model here was trained on."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def _tiny_pair(cache: Path, seed: int):
    """A tiny GPT-2 policy and reward-model backbone sharing one tokenizer, saved once to the cache."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer

    policy_dir = cache / "tiny-policy"
    tok = tiny_tokenizer("gpt2")
    if not (policy_dir / "config.json").is_file():
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=2, n_positions=256,
                            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        GPT2LMHeadModel(config).save_pretrained(policy_dir)
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
    name = s.rm_backbone.replace("/", "--")
    positions = "all" if s.rm_all_positions else "final"
    out = cache / (f"rm-{name}-pairs{s.rm_pairs or 'all'}-keep{s.rm_keep_layers}-train{s.rm_trainable_layers}-"
                   f"{positions}-ep{s.rm_epochs}-seed{s.seed}")
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
    from red_rlhf.progress import Progress  # plain lines when output is not a terminal

    with Progress() as bar:
        if s.rm_trainable_layers == 0:  # frozen trunk: features once, then a linear head (seconds)
            iterations = 400
            task = bar.add_task(f"reward model: features of {len(train)} + {len(held_out)} pairs, then the score head",
                                total=score_head_ticks(len(train), len(held_out), iterations))
            metrics = train_score_head(model, tok, train, held_out, all_positions=s.rm_all_positions,
                                       iterations=iterations, max_length=512, on_step=lambda: bar.update(task, advance=1))
        else:
            if s.rm_trainable_layers is not None:
                train_only_last_layers(model, s.rm_trainable_layers)
            steps = s.rm_epochs * -(-len(train) // 16)
            task = bar.add_task(f"reward model ({len(train)} pairs)", total=steps)
            metrics = train_reward_model(
                model, tok, train, held_out, epochs=s.rm_epochs, lr=1e-3 if s.rm_backbone == "tiny" else 1e-5,
                batch_size=16, max_length=512, all_positions=s.rm_all_positions, seed=s.seed,
                on_step=lambda loss: bar.update(task, advance=1, description=f"reward model  loss {loss:.3f}"))
    print(f"reward model: held-out pairwise accuracy {metrics['accuracy_before']:.3f} -> {metrics['accuracy_after']:.3f} "
          f"({len(held_out)} pairs)")
    metrics.update(train_pairs=len(train), held_out_pairs=len(held_out))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "rm_metrics.json").write_text(json.dumps(metrics, indent=2))  # written last: marks a finished model
    return out, metrics


def train_config(s: DemoSettings, data: Path, policy: str, rm: Path, out: Path) -> Config:
    cfg = Config()
    cfg.policy.name_or_path = policy
    if s.policy != "tiny":
        cfg.policy.lora_r, cfg.policy.lora_alpha = 16, 32
    cfg.reward.model, cfg.reward.scheme = str(rm), s.reward_scheme
    # held-out prompts are evaluated by the demo itself, before and after training
    cfg.data.prompts, cfg.data.eval_prompts, cfg.data.eval_size = str(data / "prompts_train.txt"), None, 0
    cfg.rollout.batch_size, cfg.rollout.max_new_tokens, cfg.rollout.max_prompt_tokens = 8, 24, 32
    cfg.rollout.temperature = s.temperature
    # the critic starts from the reward model's trunk when both read the same tokens (a zero head: see critic_init)
    cfg.algo.critic_init = "reward-trunk" if s.policy == s.rm_backbone and s.policy != "tiny" else "policy"
    cfg.algo.epochs, cfg.algo.mini_batch_size = 2, 4
    cfg.algo.policy_lr, cfg.algo.critic_lr = s.policy_lr, 1e-3 if s.policy == "tiny" else 5e-5
    cfg.kl.coef = 0.05
    cfg.train.steps, cfg.train.output_dir = s.steps, str(out / "train")
    cfg.train.seed = s.seed if s.rl_seed is None else s.rl_seed
    cfg.train.save_every = max(1, s.steps // 2)
    return validate(cfg)


def run_demo(s: DemoSettings) -> Path:
    from red_rlhf.training.trainer import Trainer

    clock = Stopwatch()
    cache, out = Path(s.cache_dir).expanduser(), Path(s.output_dir)
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
        eager = "eager" if s.reward_scheme == "abc" else None  # ABC's heatmaps need attention weights
        scorer = TokenRewardScorer(HFRewardModel.from_pretrained(str(rm), attn_implementation=eager),
                                   policy_tokenizer=trainer.tokenizer, scheme=s.reward_scheme)
        shown = [(p, r) for p, r in zip(prompts, after) if r.strip()][: s.heatmaps]
        heat_rows = scorer.score([p for p, _ in shown], [r for _, r in shown]) if shown else []
    summary = {
        "reward_scheme": s.reward_scheme, "steps": s.steps, "seed": s.seed, "rl_seed": cfg.train.seed,
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
    print(f"report: {report}")
    return report


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


def report_html(summary, curves: Path, prompts, before, after, before_rm, after_rm, heat_rows) -> str:
    image = base64.b64encode(curves.read_bytes()).decode()
    judge_before, judge_after = judge(before), judge(after)
    rows = "\n".join(
        f"<tr><td>{html.escape(p)}</td><td>{html.escape(b)}</td><td>{rb:+.3f} / {jb:+.2f}</td>"
        f"<td>{html.escape(a)}</td><td>{ra:+.3f} / {ja:+.2f}</td></tr>"
        for p, b, a, rb, ra, jb, ja in zip(prompts, before, after, before_rm, after_rm, judge_before, judge_after))
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                    f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>red-rlhf demo report</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }} td, th {{ border: 1px solid #ddd; padding: .3em .6em;
vertical-align: top; text-align: left; }} img {{ max-width: 100%; }}
.row {{ border: 1px solid #ddd; border-radius: 6px; padding: 1em; margin-bottom: 1em; }}
.prompt {{ color: #555; }} .tokens {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }}
.tok {{ border-right: 1px solid rgba(0,0,0,.08); }} .stats {{ color: #555; font-size: .9em; }}</style></head>
<body><h1>red-rlhf demo report</h1>
<h2 id="summary">Summary</h2><table>{facts}</table>
<h2 id="curves">Training curves</h2><img alt="training curves" src="data:image/png;base64,{image}">
<h2 id="samples">Held-out prompts, before and after training</h2>
<p>Scores: training reward model / independent judge (VADER compound, -1..1).</p>
<table><tr><th>prompt</th><th>before</th><th>score</th><th>after</th><th>score</th></tr>
{rows}</table>
<h2 id="heatmaps">Per-token rewards of responses after training</h2>
{heatmap_rows_html(heat_rows)}
</body></html>
"""
