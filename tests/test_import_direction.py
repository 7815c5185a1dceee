"""Tier 1: the package's layers import downwards only (math -> models -> training -> command line), read from the
source with ast, function-level imports included; the package's __init__ re-exports and may import any layer."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "red_rlhf"
# Lower numbers are lower layers; a module may import its own layer or lower ones, never a higher one.
LAYERS = {"core": 0, "progress": 0, "costs": 0, "config": 1, "data": 2, "models": 3, "report": 4, "training": 5,
          "demo": 6, "integrations": 6, "cli": 7}


def _layer(parts: tuple[str, ...]) -> str:
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "red_rlhf":
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "red_rlhf")


def test_every_module_belongs_to_a_known_layer():
    layers = {_layer(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in PACKAGE.rglob("*.py")}
    assert layers - {"__init__", "configs"} <= set(LAYERS), sorted(layers - set(LAYERS))


def test_no_layer_imports_a_higher_one():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _layer(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if source == "__init__":
            continue
        for module, line in _imports(path):
            target = module.split(".")[1] if "." in module else "__init__"
            if target == "__init__" or LAYERS[target] > LAYERS[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({source}) imports {module}")
    assert not upward, "\n".join(upward)


def test_package_exports_the_user_entry_points_and_stays_light_to_import():
    """`from red_rlhf import Trainer, load_config` works, and `import red_rlhf` alone (scoring) loads no accelerate."""
    import subprocess
    import sys

    code = ("import sys, red_rlhf; light = 'accelerate' not in sys.modules; "
            "from red_rlhf import *; from red_rlhf import Trainer, load_config, group_advantages, TokenRewardScorer; "
            "missing = [n for n in red_rlhf.__all__ if not hasattr(red_rlhf, n)]; "
            "print(light, missing, Trainer.__name__, load_config.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "[]", "Trainer", "load_config"]
