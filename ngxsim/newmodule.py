"""``ngxsim new-module NAME``: write the package of a new third-party module from a template.

The template (``ngxsim/templates/module/``, installed as package data) is a complete module with
a directive, a content handler, a publisher and a subscriber through worker_events, an entry
point, a README, an example config and tests that use ngxsim's pytest plugin. Its files carry
``{{placeholders}}`` (not ``$`` or ``{}``: nginx configs use both) replaced here.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from . import __version__
from .core.conf.loader import load_configuration
from .core.modules import installed_modules

# a module's name is its `load_module` name, a directive's name and part of its package's name:
# a lower-case identifier, as nginx's directive names are
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_MAX_NAME = 40

# template file -> path in the new package (``{package}`` and ``{name}`` filled in)
_FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "example.conf.tmpl": "{name}.conf",
    "package/__init__.py.tmpl": "{package}/__init__.py",
    "tests/test_module.py.tmpl": "tests/test_{name}.py",
}


class NewModuleError(ValueError):
    """The module cannot be written as asked (the message says why and what to do)."""


def check_name(name: str) -> None:
    """Raise ``NewModuleError`` unless ``name`` can name a new module."""
    if not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        raise NewModuleError(
            f'invalid module name "{name}": use a lower-case Python identifier of at most {_MAX_NAME} '
            f'characters (a-z, digits, "_", starting with a letter): it is the load_module name, a directive '
            f'name and part of the package name ngxsim_NAME')
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise NewModuleError(f'invalid module name "{name}": a Python keyword')
    if name == "core":
        raise NewModuleError('invalid module name "core": the name of ngxsim\'s own built-in module')
    for installed, target in installed_modules():
        if installed == name:
            raise NewModuleError(f'a module named "{name}" is already installed ({target}): choose another name')
    # the template declares NAME and NAME_text beside the core's and worker_events' directives
    taken = set(load_configuration("<new-module check>", text="load_module worker_events;\n").table.entries)
    for directive in (name, f"{name}_text"):
        if directive in taken:
            raise NewModuleError(f'invalid module name "{name}": its directive "{directive}" is one of ngxsim\'s '
                                 f'or worker_events\' own: choose another name')


def render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.search(r"\{\{\w+\}\}", text)
    if left:  # a template that names an unknown placeholder is a bug of ngxsim, not the user's
        raise AssertionError(f"template placeholder {left.group()} has no value")
    return text


def create(name: str, parent: str | os.PathLike = ".") -> Path:
    """Write the package of module ``name`` into ``parent/ngxsim-NAME`` and return that folder.

    Nothing is written unless all of it is: the files go to a temporary folder beside the
    target, renamed into place at the end; an existing target is never touched.
    """
    check_name(name)
    parent = Path(parent)
    if not parent.is_dir():
        raise NewModuleError(f"{parent} is not a directory")
    dist = "ngxsim-" + name.replace("_", "-")
    target = parent / dist
    if target.exists() or target.is_symlink():
        raise NewModuleError(f"{target} already exists: remove it, or choose another name or --dir")
    values = {"name": name, "package": f"ngxsim_{name}", "dist": dist, "ngxsim_version": __version__}
    templates = resources.files("ngxsim").joinpath("templates", "module")
    staging = Path(tempfile.mkdtemp(prefix=f".{dist}.", dir=parent))
    try:
        for source, dest in _FILES.items():
            text = templates.joinpath(*source.split("/")).read_text(encoding="utf-8")
            path = staging / dest.format(name=name, package=values["package"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(text, values), encoding="utf-8")
        staging.chmod(0o777 & ~_umask())
        os.rename(staging, target)  # fails (and we clean up) if the target appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(name: str, parent: str) -> int:
    """The command: write the package, say what was written and what to do next."""
    try:
        target = create(name, parent)
    except (NewModuleError, OSError) as exc:
        print(f"ngxsim: {exc}", file=sys.stderr)
        return 1
    print(f"ngxsim: wrote module \"{name}\" in {target}:")
    for dest in _FILES.values():
        print(f"  {dest.format(name=name, package=f'ngxsim_{name}')}")
    print("next:")
    print(f"  cd {target} && pip install -e '.[test]' && pytest")
    print(f"  ngxsim -t -c {name}.conf       # in that folder")
    return 0
