"""Loading a config: YAML files (with `base:` chains), command-line overrides --section.key=value, type checks
against the fields' annotations; `load_config` returns the config validated."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

from red_rlhf.config.schema import SOURCE_SHORTHAND, Config, ConfigError, SourceConfig
from red_rlhf.config.validate import validate


def _coerce(name: str, value, annotation):
    """Check (and for command-line strings, convert) a value against a field's type annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                value = annotation(value)
            except ValueError:
                raise ConfigError(f"{name} must be a number ({annotation.__name__}), got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number ({annotation.__name__}), got {value!r}")
        if annotation is int and float(value) != int(value):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return annotation(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(name, annotation, value)
    return value


def _build(name: str, cls, value):
    """A nested config dataclass (e.g. one of reward.sources) from a mapping, every key checked."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of keys, got {value!r}")
    hints, obj = typing.get_type_hints(cls), cls()
    for key, item in value.items():
        if key not in hints:
            raise ConfigError(f"unknown config key {name}.{key}; it has {sorted(hints)}")
        setattr(obj, key, _coerce(f"{name}.{key}", item, hints[key]))
    return obj


REMOVED_KEYS = {
    "train.tensorboard": "drop 'tensorboard' from train.log_with (train.log_with: [] logs to metrics.jsonl only)",
}
"""Keys the config no longer has, with what replaces each: a file or override that still sets one is told so."""


def _apply(cfg: Config, section: str, key: str, value) -> None:
    if f"{section}.{key}" in REMOVED_KEYS:
        raise ConfigError(f"{section}.{key} was removed: {REMOVED_KEYS[f'{section}.{key}']}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise ConfigError(f"unknown config section {section!r}; sections are {sorted(sections)}")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if section == "reward" and key in SOURCE_SHORTHAND:  # the one-source short form of reward.sources
        hints = {key: typing.get_type_hints(SourceConfig)[key]}
    if key not in hints:
        raise ConfigError(f"unknown config key {section}.{key}; {section} has {sorted(hints)}")
    if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in typing.get_args(hints[key]):
        value = None
    setattr(obj, key, _coerce(f"{section}.{key}", value, hints[key]))


def from_dict(data: dict) -> Config:
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of sections")
    for section, values in data.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping of keys")
        short = sorted(set(values) & set(SOURCE_SHORTHAND))
        if section == "reward" and "sources" in values and short:
            raise ConfigError(f"reward.sources replaces the one-source short form reward.{short[0]}: set either the "
                              "list or the short form")
        for key, value in values.items():
            _apply(cfg, section, key, value)
    return cfg


def parse_override(text: str) -> tuple[str, str, str]:
    """'--section.key=value' or 'section.key=value' -> (section, key, value)."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like --section.key=value")
    path, value = body.split("=", 1)
    section, key = path.split(".", 1)
    return section, key, value


CONFIG_DIR = Path(__file__).parents[1] / "configs"  # the shipped configs, inside the package


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name: str) -> Path:
    """A config file's path: the file itself, or a shipped config by name ("toy", "demo", "toy.yaml")."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent in (Path("."), Path("configs")) and shipped.is_file():
        return shipped
    raise ConfigError(f"config file {name} does not exist (shipped configs, usable by name: {', '.join(shipped_configs())})")


def read_yaml(name: str, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a mapping of sections. `base: NAME` loads that config first; this file's keys override it
    (section by section, key by key; a list such as reward.sources is replaced whole)."""
    import yaml

    path = find_config(name)
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path}: its base chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: base must name a config file, got {base!r}")
    merged = read_yaml(base if Path(base).is_absolute() or not (path.parent / base).is_file() else str(path.parent / base),
                       _seen + (path.resolve(),))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            if section == "reward" and ("sources" in values or set(values) & set(SOURCE_SHORTHAND)):
                for key in ("sources", *SOURCE_SHORTHAND):  # a new reward replaces the base's whole
                    merged[section].pop(key, None)
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    """YAML file (optional; a path or a shipped config's name) + command-line overrides -> a validated Config."""
    cfg = from_dict(read_yaml(path) if path is not None else {})
    for text in overrides:
        _apply(cfg, *parse_override(text))
    return validate(cfg)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
