"""Prompts (red-rlhf's formats: a .txt file, one a line; a .jsonl file with "prompt"; or "toy") -> verl parquet files.

    python examples/verl/prepare_prompts.py --prompts prompts.jsonl --out ~/data/red_verl [--val-size 8]

verl's RLHFDataset reads the column `prompt` as a chat (a list of {"role", "content"} messages); the other columns
are the ones verl's datasets carry. The reward comes from the RED reward manager, so there is no ground truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from red_rlhf.data.prompts import read_prompts


def to_records(prompts: list[str], split: str) -> list[dict]:
    return [{"data_source": "red_rlhf", "prompt": [{"role": "user", "content": p}], "ability": "chat",
             "reward_model": {"style": "model", "ground_truth": ""}, "extra_info": {"split": split, "index": i}}
            for i, p in enumerate(prompts)]


def write_splits(prompts_path: str, out: str | Path, val_size: int = 8) -> tuple[Path, Path]:
    prompts = read_prompts(prompts_path, "--prompts")
    if not 0 < val_size < len(prompts):
        raise SystemExit(f"--val-size must be between 1 and {len(prompts) - 1} for {len(prompts)} prompts, got {val_size}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    train, val = out / "train.parquet", out / "val.parquet"
    pd.DataFrame(to_records(prompts[:-val_size], "train")).to_parquet(train)
    pd.DataFrame(to_records(prompts[-val_size:], "val")).to_parquet(val)
    return train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="toy", help='a .txt or .jsonl prompt file, or "toy"')
    parser.add_argument("--out", default="~/data/red_verl", help="folder for train.parquet and val.parquet")
    parser.add_argument("--val-size", type=int, default=8, help="the last N prompts become val.parquet")
    args = parser.parse_args()
    train, val = write_splits(args.prompts, args.out, args.val_size)
    print(f"wrote {train} and {val}")


if __name__ == "__main__":
    main()
