"""Every Python version pyproject declares has a nox session that runs the suite on it; the
package says the version pyproject declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_nox_sessions_cover_the_declared_python_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.fullmatch(r".* :: 3\.\d+", c)]
    sessions = re.search(r"^PYTHONS = (\[.*\])", (ROOT / "noxfile.py").read_text(), re.M).group(1)
    assert declared and eval(sessions) == declared  # noqa: S307 - a literal list in our own file
    low = re.fullmatch(r">=(3\.\d+)", project["requires-python"]).group(1)
    assert declared[0] == low


def test_the_package_says_the_version_pyproject_declares():
    import ngxsim
    from ngxsim.core.http import api, status

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert ngxsim.__version__ == api.__version__ == status.__version__ == version
