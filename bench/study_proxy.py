"""Study v2's proxy, pinned (docs/results/learning-v2/PROTOCOL.md, amendment 2).

The proxy is SmolLM2-135M-Instruct's first 20 blocks (the packaged conversion, byte-identical wherever it is made)
and a 576-number score head. Retraining the head on another machine gives slightly different numbers, so the head of
the proxy the study uses from seed 5 on is committed (`proxy_head.json`) with the sha256 of the folder's
`model.safetensors`; `restore` rebuilds that folder without training and refuses one whose bytes differ. The study's
runner calls it before the demo's cache would train a new proxy.

    .venv/bin/python bench/study_proxy.py restore      # into ~/.cache/red-rlhf (or --cache-dir)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

PINNED = Path(__file__).resolve().parents[1] / "docs" / "results" / "learning-v2" / "proxy_head.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pin(rm_dir: Path, pinned: Path, keep_layers: int) -> dict:
    """Write a trained head-only proxy's score head, metrics and model sha256 to `pinned` (how proxy_head.json was made)."""
    from safetensors import safe_open

    with safe_open(str(rm_dir / "model.safetensors"), "pt") as f:
        head = f.get_tensor("score.weight")
    record = {"folder": rm_dir.name, "keep_layers": keep_layers, "model_sha256": _sha256(rm_dir / "model.safetensors"),
              "rm_metrics": json.loads((rm_dir / "rm_metrics.json").read_text()),
              "score_weight": [float(x) for x in head.flatten()]}
    pinned.write_text(json.dumps(record) + "\n")
    return record


def restore(backbone: str | Path, out: Path, pinned: Path = PINNED) -> Path:
    """The pinned proxy in `out`: rebuilt from `backbone` and the committed head when missing, checked when present."""
    import torch

    from red_rlhf.models.packaged import publish_folder
    from red_rlhf.training.reward_model import keep_first_layers, load_backbone, save_reward_model

    p = json.loads(pinned.read_text())
    if (out / "rm_metrics.json").is_file():
        if _sha256(out / "model.safetensors") != p["model_sha256"]:
            raise RuntimeError(f"the reward model in {out} is not the study's pinned proxy ({pinned.name}, sha256 "
                               f"{p['model_sha256'][:12]}...): move that folder away, then run "
                               f"`bench/study_proxy.py restore`")
        return out
    model, tok = load_backbone(str(backbone))
    keep_first_layers(model, p["keep_layers"])
    with torch.no_grad():
        model.score.weight.copy_(torch.tensor(p["score_weight"], dtype=torch.float32).view_as(model.score.weight))
    tmp = out.with_name(f"{out.name}.restore-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_reward_model(model, tok, tmp, p["rm_metrics"])
    got = _sha256(tmp / "model.safetensors")
    if got != p["model_sha256"]:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"rebuilding the pinned proxy from {backbone} gave model.safetensors sha256 {got[:12]}..., "
                           f"not {p['model_sha256'][:12]}...: the backbone differs; do not run the study with it")
    publish_folder(tmp, out, marker="rm_metrics.json")  # another worker's complete restore there first: kept
    print(f"reward model restored from {pinned.name} in {out} (no training)")
    return out


def restore_cached(cache_dir: str | Path) -> Path:
    """The pinned proxy in the demo's cache, next to the packaged SmolLM2 it is cut from."""
    from red_rlhf.models.packaged import smollm2_instruct

    cache = Path(cache_dir).expanduser()
    return restore(smollm2_instruct(cache), cache / json.loads(PINNED.read_text())["folder"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["restore"])
    parser.add_argument("--cache-dir", default="~/.cache/red-rlhf")
    args = parser.parse_args()
    print(restore_cached(args.cache_dir))


if __name__ == "__main__":
    main()
