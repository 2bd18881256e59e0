"""First-party modules use only ngxsim's public API (``ngxsim/__init__.py``), like a third-party
module would: no import of ``ngxsim.core`` or another internal module."""

from __future__ import annotations

import re
from pathlib import Path

import ngxsim

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def test_plugins_import_only_the_public_api():
    offenders = []
    for path in sorted(PLUGINS.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import)\s+ngxsim\.", line):
                offenders.append(f"{path.relative_to(PLUGINS)}:{number}: {line.strip()}")
    assert not offenders, "internal imports:\n" + "\n".join(offenders)


def test_every_public_name_exists():
    missing = [name for name in ngxsim.__all__ if not hasattr(ngxsim, name)]
    assert not missing
