"""docs/reliability.md names a test for each bad input; every test it names exists (the table stays current)."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_test_the_reliability_table_names_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = re.findall(r"(test_\w+\.py)::(test_\w+)", doc)
    assert len(named) >= 30
    missing = [f"{file}::{name}" for file, name in named
               if not (ROOT / "tests" / file).is_file()
               or f"def {name}(" not in (ROOT / "tests" / file).read_text(encoding="utf-8")]
    assert missing == []
