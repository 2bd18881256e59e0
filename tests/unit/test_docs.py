"""Every hook has a section in docs/hooks.md; every documented hook exists."""

from __future__ import annotations

import re
from pathlib import Path

from ngxsim import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hook_names():
    return {name for name in dir(hookspecs) if name.startswith("ngxsim_")}


def documented():
    return set(re.findall(r"^## (ngxsim_\w+)$", (DOCS / "hooks.md").read_text(), re.M))


def test_every_hook_has_a_section():
    missing = hook_names() - documented()
    assert not missing, f"hooks without a section in docs/hooks.md: {sorted(missing)}"


def test_every_section_names_a_real_hook():
    stale = documented() - hook_names()
    assert not stale, f"docs/hooks.md documents hooks that do not exist: {sorted(stale)}"


def test_every_hookspec_has_a_docstring():
    for name in hook_names():
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name
