"""The Sphinx documentation builds without a single warning (as CI would publish it), and its
reference documents every public name and every hook: a new export or hookspec without a
docstring entry in docs/reference.rst fails here."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ngxsim
from ngxsim import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(result of ``sphinx-build -W --keep-going``, output folder), one fresh build per session."""
    out = tmp_path_factory.mktemp("docs-html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-b", "html",
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, timeout=120,
    )
    return result, out


def anchors(out: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', (out / "reference.html").read_text()))


def test_the_docs_build_with_warnings_as_errors(built):
    result, out = built
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr[-4000:]
    assert (out / "index.html").is_file()


def test_every_public_name_is_in_the_reference(built):
    _, out = built
    missing = [name for name in ngxsim.__all__ if f"ngxsim.{name}" not in anchors(out)]
    assert not missing, f"exported by ngxsim but not in docs/reference.rst: {missing}"


def test_every_hook_is_in_the_reference_with_an_example(built):
    _, out = built
    html = (out / "reference.html").read_text()
    names = sorted(name for name in dir(hookspecs) if name.startswith("ngxsim_"))
    missing = [name for name in names if f"ngxsim.hookspecs.{name}" not in anchors(out)]
    assert not missing, f"hookspecs not in docs/reference.rst: {missing}"
    for name in names:
        # a hook's entry runs from its anchor to the next hook's (or the section's end)
        section = html.split(f'id="ngxsim.hookspecs.{name}"', 1)[1].split("</dd>", 1)[0]
        assert "<pre>" in section, f"{name}: no example in its docstring"


def test_what_hooks_receive_is_in_the_reference_with_its_attributes(built):
    _, out = built
    have = anchors(out)
    expected = [
        "ngxsim.core.conf.loader.Configuration.stash", "ngxsim.core.conf.loader.Configuration.zones",
        "ngxsim.core.conf.loader.Configuration.jobs", "ngxsim.core.conf.loader.Configuration.blocks",
        "ngxsim.core.conf.loader.Block.error", "ngxsim.core.conf.loader.Block.stash",
        "ngxsim.core.conf.zones.ZoneSpecs.declare", "ngxsim.core.conf.zones.JobSpecs.declare",
        "ngxsim.core.process.Runtime.publish", "ngxsim.core.process.Runtime.on_request_start",
        "ngxsim.core.process.Runtime.zone", "ngxsim.core.process.Runtime.stash",
        "ngxsim.core.http.context.RequestContext.arg", "ngxsim.core.http.context.RequestContext.environ",
        "ngxsim.core.http.context.RequestContext.vars", "ngxsim.core.http.context.RequestContext.stash",
        "ngxsim.Zone.buf", "ngxsim.Zone.lock", "ngxsim.Zone.fresh",
    ]
    assert [a for a in expected if a not in have] == []


def test_every_entry_of_the_reference_says_something(built):
    _, out = built
    html = (out / "reference.html").read_text()
    empty = re.findall(r'id="([^"]+)">(?:(?!</dt>).)*</dt>\s*<dd>\s*</dd>', html, re.S)
    assert not empty, f"entries without a docstring or text: {empty}"


def examples(doc: str) -> list[str]:
    """The literal blocks of a docstring (the indented lines after a paragraph ending in ``::``)."""
    blocks, lines = [], doc.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith("::"):
            body = []
            for following in lines[i + 1:]:
                if following.strip() and not following.startswith("    "):
                    break
                body.append(following)
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n"))
    return blocks


@pytest.mark.parametrize("name", sorted(name for name in dir(hookspecs) if name.startswith("ngxsim_")))
def test_each_hook_s_example_compiles_and_uses_only_ngxsim_s_public_names(name):
    (code,) = examples(inspect.getdoc(getattr(hookspecs, name)))
    tree = ast.parse(code)  # a SyntaxError fails the test
    bound = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)}
    bound |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    bound |= {arg.arg for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.Lambda))
              for arg in node.args.args}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    unknown = used - bound - set(ngxsim.__all__) - set(dir(builtins))
    assert not unknown, f"{name}'s example uses names ngxsim does not export: {sorted(unknown)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("ngxsim_"):
            assert node.name == name
            spec = inspect.signature(getattr(hookspecs, name)).parameters
            assert {a.arg for a in node.args.args} <= set(spec), f"{name}'s example takes arguments the hook has not"
