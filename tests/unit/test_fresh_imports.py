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


def test_a_failure_leaves_a_package_attribute_named_like_its_submodule_as_it_was(package):
    # plugins/upstreams: ``from .state import state`` binds the package's "state" to the function
    # state.state, not to the submodule; putting the old modules back must not rebind it (a
    # rejected reload did, and the next worker respawn called a module: issue 19)
    (package / "__init__.py").write_text("from .sub import VALUE\nfrom .state import state\n")
    (package / "state.py").write_text("def state():\n    return 'the function'\n")
    old = importlib.import_module("ngxsim_fresh_pkg")
    assert old.state() == "the function"
    (package / "sub.py").write_text("this is not python at all\n")
    with pytest.raises(SyntaxError), fresh_imports(["ngxsim_fresh_pkg"]):
        importlib.import_module("ngxsim_fresh_pkg")
    assert old.state() == "the function" and old.sub is sys.modules["ngxsim_fresh_pkg.sub"]


def test_a_failure_puts_back_the_attribute_of_a_parent_package_that_is_not_imported_anew(package):
    # ngxsim_plugins.upstreams is re-imported, ngxsim_plugins is not: the new import binds the
    # parent's "upstreams" to the new module, which must go back to the old one (and a module
    # the block imported for the first time must not stay reachable from the parent)
    (package / "child.py").write_text("VALUE = 'child'\n")
    (package / "other.py").write_text("VALUE = 'other'\n")
    parent = importlib.import_module("ngxsim_fresh_pkg")
    old_child = importlib.import_module("ngxsim_fresh_pkg.child")
    with pytest.raises(RuntimeError), fresh_imports(["ngxsim_fresh_pkg.child", "ngxsim_fresh_pkg.other"]):
        assert importlib.import_module("ngxsim_fresh_pkg.child") is not old_child
        importlib.import_module("ngxsim_fresh_pkg.other")
        raise RuntimeError("the config is rejected")
    assert parent.child is old_child and sys.modules["ngxsim_fresh_pkg.child"] is old_child
    assert not hasattr(parent, "other") and "ngxsim_fresh_pkg.other" not in sys.modules
