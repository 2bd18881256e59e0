"""The pytest plugin as a user gets it: a fresh venv where only ngxsim's wheel (and pytest) is
installed, with nothing of this checkout importable — then pytester checks of the plugin
(tests/plugin/pytester_checks.py) and the example third-party module's own test suite
(examples/origin_cache), which uses nothing but the plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what the ngxsim wheel is built from (copied, so the build leaves nothing in the checkout)
SOURCES = ("pyproject.toml", "README.md", "pytest_ngxsim.py", "ngxsim", "plugins")


def _run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """(python, env) of a new venv holding the ngxsim wheel built from this checkout, its
    dependencies and pytest. No pip inside it: this process's pip installs into it (--python),
    which saves the seconds ensurepip takes."""
    folder = tmp_path_factory.mktemp("fresh")
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], timeout=120)
    if made.returncode != 0:
        pytest.skip(f"cannot make a venv here: {made.stderr.strip()[-500:]}")
    python = folder / "venv" / "bin" / "python"
    source = folder / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    wheel = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *_no_isolation(), "-w", str(folder / "dist"),
                  str(source)])
    assert wheel.returncode == 0, f"the ngxsim wheel does not build:\n{wheel.stderr}"
    (built,) = (folder / "dist").glob("ngxsim-*.whl")
    install = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                    str(built), "pytest"])
    if install.returncode != 0:
        pytest.skip(f"cannot install into a fresh venv here (no package index?): {install.stderr.strip()[-800:]}")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PYTEST", "NGXSIM", "VIRTUAL_ENV", "PIP_"))}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return python, env


def _no_isolation() -> list[str]:
    """Build with this venv's setuptools when it can (the test extra brings one that builds
    wheels itself): ~2 s instead of ~6 s for pip to set up an isolated build environment."""
    try:
        import setuptools
    except ImportError:
        return []
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return ["--no-build-isolation"] if (major, minor) >= (70, 1) else []


def _pytest_in(python, env, folder: Path, *args):
    run = _run([str(python), "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder, env=env)
    assert run.returncode == 0, f"{' '.join(args)} in {folder}:\n{run.stdout[-8000:]}\n{run.stderr[-2000:]}"
    return run.stdout


def test_the_plugin_checks_pass_in_a_fresh_venv(fresh_venv, tmp_path):
    python, env = fresh_venv
    shutil.copy(ROOT / "tests" / "plugin" / "pytester_checks.py", tmp_path / "pytester_checks.py")
    out = _pytest_in(python, env, tmp_path, "-p", "pytester", "-q", "pytester_checks.py")
    assert "3 passed" in out


def test_the_example_module_s_tests_pass_in_a_fresh_venv(fresh_venv, tmp_path):
    python, env = fresh_venv
    example = tmp_path / "origin_cache"
    shutil.copytree(ROOT / "examples" / "origin_cache", example, ignore=shutil.ignore_patterns("__pycache__"))
    out = _pytest_in(python, env, example, "-q")
    assert "4 passed" in out


def test_a_module_from_ngxsim_new_module_installs_and_its_tests_pass(fresh_venv, tmp_path):
    """``ngxsim new-module`` of the installed wheel (its templates are package data), the package
    it writes installed by its entry point, its own test suite, and ``ngxsim -t`` of its config."""
    python, env = fresh_venv
    ngxsim = python.parent / "ngxsim"
    made = _run([str(ngxsim), "new-module", "greeter", "--dir", str(tmp_path)], env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "ngxsim-greeter"
    assert str(package) in made.stdout

    # not installed yet: the entry point is what `load_module greeter;` finds
    before = _run([str(ngxsim), "-t", "-c", str(package / "greeter.conf")], env=env, cwd=tmp_path)
    assert before.returncode == 1 and 'module "greeter" not found' in before.stderr, before.stderr

    wheel = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *_no_isolation(),
                  "-w", str(tmp_path / "dist"), str(package)])
    assert wheel.returncode == 0, f"the generated package does not build:\n{wheel.stderr}"
    (built,) = (tmp_path / "dist").glob("ngxsim_greeter-*.whl")
    install = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-compile", str(built)])
    assert install.returncode == 0, install.stderr

    checked = _run([str(ngxsim), "-t", "-c", str(package / "greeter.conf")], env=env, cwd=tmp_path)
    assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
    out = _pytest_in(python, env, package, "-q")
    assert "3 passed" in out
