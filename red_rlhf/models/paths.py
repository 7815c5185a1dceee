"""Model names that are local paths: say what is wrong with them before a loader says something else.

Hugging Face reads "name" and "org/name" as hub ids; a path that does not exist ends in a message about repo
ids, a directory without a model in one about tokenizer classes. These checks run first.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")


def looks_local(name_or_path: str) -> bool:
    """A filesystem path rather than a hub id: starts with . / ~, has more than one '/', or exists."""
    return name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or Path(name_or_path).exists()


def check_model_path(name_or_path: str, what: str, needs: tuple[str, ...] = MODEL_FILES) -> None:
    """Raise FileNotFoundError / ValueError naming `what` when a local model path cannot be a model."""
    if not name_or_path.strip():
        raise ValueError(f"{what} is empty: name a model directory or a hub id")
    if not looks_local(name_or_path):
        return
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what}: path {name_or_path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{what}: {name_or_path} is a file; give the directory save_pretrained wrote")
    if not any((path / name).is_file() for name in needs):
        raise ValueError(f"{what}: {name_or_path} is a directory but holds no model (none of {', '.join(needs)}); "
                         "give the directory save_pretrained wrote")
    if needs == MODEL_FILES:
        check_model_files(path, what)


def check_model_files(path: Path, what: str) -> None:
    """Raise ValueError naming the file when a model folder's config.json is not JSON or a safetensors file is
    empty, truncated or not safetensors (a copy cut short, a full disk). Reads the config and each weights file's
    header only; the loader's own message would be a traceback ("SafetensorError: incomplete metadata")."""
    import json

    from safetensors import safe_open

    config = path / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{what}: {config} is not valid JSON ({err}): the model folder is damaged") from None
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors' SafetensorError: a truncated or empty file, a foreign format
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            size = file.stat().st_size
            raise ValueError(f"{what}: {file} is not a whole safetensors file ({reason}; {size} bytes): the model "
                             "folder is damaged, copy or save it again") from None


def writable_dir(path: str | Path, what: str) -> Path:
    """`path` as a directory this process can write into (created if missing), checked before anything slow runs.
    Raises ConfigError naming `what` (a config field or a command-line option)."""
    import os

    from red_rlhf.config import ConfigError

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one per process: ranks probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what} {path} is not writable: {err.strerror or err}") from None
    return out
