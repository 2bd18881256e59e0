"""docs/testing.md's flow test is the example module's real, tested code, not a sketch that rots."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_flow_test_is_the_example_s_first_test_verbatim():
    doc = (ROOT / "docs" / "testing.md").read_text()
    section = doc.split("## A complete flow test", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    example = (ROOT / "examples" / "origin_cache" / "tests" / "test_origin_cache.py").read_text()
    assert len(blocks) == 2
    for block in blocks:
        assert block in example, f"docs/testing.md shows code that examples/origin_cache does not run:\n{block}"
    assert len(blocks[1].strip().splitlines()) <= 16
