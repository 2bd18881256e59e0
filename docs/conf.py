"""Sphinx configuration of ngxsim's documentation: the module author's reference (generated from
the docstrings by autodoc) and the guides in Markdown (read by myst-parser).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``. The test suite builds it
the same way (tests/unit/test_sphinx_docs.py), so a docstring that does not parse fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

# the checkout's own package first, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

project = "ngxsim"
author = "the ngxsim authors"
copyright = "ngxsim authors"  # noqa: A001 - Sphinx's name for it

extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",  # the guides are Markdown, shared with GitHub's rendering
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# signatures as written in the source (string annotations stay strings: no forward-reference
# resolution that would need the TYPE_CHECKING-only imports)
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options: dict = {}  # each directive lists the members it shows: the public ones

# the guides link to files of the repository (../ngxsim/hookspecs.py): not pages of this site
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "ngxsim"


def _repository_paths_as_text(app, doctree, docname):
    """The guides link to files of the repository outside docs/ (``../examples/origin_cache``),
    which GitHub renders as links but which are no page of this site: show them as the
    repository path in code style rather than as a broken link (any other unresolved link
    still fails the build)."""
    from docutils import nodes
    from sphinx import addnodes

    docs = Path(app.srcdir).resolve()
    here = (docs / docname).parent
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst":
            continue
        target = node["reftarget"]
        path = Path(target) if target.startswith("/") else (here / target)
        path = path.resolve()
        if docs in path.parents or path == docs:
            continue
        root = docs.parent
        shown = str(path.relative_to(root)) if root in path.parents else target
        node.replace_self(nodes.literal(shown, shown))


# objects the core makes and hands to hooks: modules never construct them, so their constructor
# signatures (long, with internals) would only mislead
_HANDED_TO_HOOKS = {
    "ngxsim.core.conf.loader.Configuration", "ngxsim.core.conf.loader.Block", "ngxsim.core.process.Runtime",
    "ngxsim.core.http.context.RequestContext", "ngxsim.core.conf.zones.ZoneSpecs",
    "ngxsim.core.conf.zones.JobSpecs", "ngxsim.Zone", "ngxsim.core.shm.Doorbell",
}


def _no_constructor_signature(app, what, name, obj, options, signature, return_annotation):
    if what == "class" and name in _HANDED_TO_HOOKS:
        return "", None
    return None


def _attributes_sections(app, what, name, obj, options, lines):
    """A class docstring's Google-style "Attributes:" section (readable in the source) becomes one
    attribute entry, with an anchor, per public attribute. Only class docstrings: napoleon on
    everything would read a property's "``$host``: the request's host" as a type and a text."""
    if what in ("class", "exception") and any(line.strip() == "Attributes:" for line in lines):
        from sphinx.ext.napoleon import Config, GoogleDocstring

        config = Config(napoleon_use_ivar=False, napoleon_numpy_docstring=False)
        lines[:] = GoogleDocstring(lines, config, app, what, name, obj, options).lines()


def _no_docstring_from_the_type(app, what, name, obj, options, lines):
    """A constant (``ngxsim.MAIN = "main"``) has no docstring of its own: do not show str's."""
    if what in ("data", "attribute") and obj is not None and getattr(obj, "__doc__", None) == type(obj).__doc__:
        lines.clear()


def setup(app):
    app.connect("autodoc-process-signature", _no_constructor_signature)
    app.connect("autodoc-process-docstring", _attributes_sections)
    app.connect("autodoc-process-docstring", _no_docstring_from_the_type)
    # before myst's resolver (a post-transform at priority 9 or later): doctree-read runs first
    app.connect("doctree-read", lambda app, doctree: _repository_paths_as_text(app, doctree, app.env.docname))
