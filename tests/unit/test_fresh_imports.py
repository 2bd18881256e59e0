"""fresh_imports: what ngxsim -c's SIGHUP uses to run a module's new code, or keep the old."""

from __future__ import annotations

import importlib
import sys

import pytest

from ngxsim.core.modules import fresh_imports, plugin_module_names


@pytest.fixture
def package(tmp_path, monkeypatch):
    pkg = tmp_path / "ngxsim_fresh_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .sub import VALUE\n")
    (pkg / "sub.py").write_text("VALUE = 'old'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for key in [k for k in sys.modules if k.startswith("ngxsim_fresh_pkg")]:
        del sys.modules[key]


def test_the_block_imports_a_module_and_its_submodules_anew(package):
    old = importlib.import_module("ngxsim_fresh_pkg")
    (package / "sub.py").write_text("VALUE = 'new, longer'\n")
    with fresh_imports(plugin_module_names([("m", old)])):
        new = importlib.import_module("ngxsim_fresh_pkg")
    assert new is not old and new.VALUE == "new, longer" and sys.modules["ngxsim_fresh_pkg.sub"].VALUE == "new, longer"


def test_a_failure_in_the_block_puts_the_old_modules_back(package):
    old = importlib.import_module("ngxsim_fresh_pkg")
    old_sub = sys.modules["ngxsim_fresh_pkg.sub"]
    (package / "sub.py").write_text("this is not python at all\n")
    with pytest.raises(SyntaxError), fresh_imports(["ngxsim_fresh_pkg"]):
        importlib.import_module("ngxsim_fresh_pkg")
    assert sys.modules["ngxsim_fresh_pkg"] is old and sys.modules["ngxsim_fresh_pkg.sub"] is old_sub
    assert old.sub is old_sub


def test_ngxsim_itself_is_never_imported_anew():
    core = importlib.import_module("ngxsim.core.http.core_module")
    with fresh_imports(["ngxsim.core.http.core_module", "ngxsim"]):
        assert sys.modules["ngxsim.core.http.core_module"] is core
