"""The suite on every supported Python (pyproject's classifiers): ``nox`` runs them all,
``nox -s tests-3.13`` one. Interpreters are found on PATH (``pyenv shell 3.11.7 3.12.1 3.13.0``
or pyenv's shims put them there). Each session installs ngxsim with its test extra into its own
virtualenv; arguments after ``--`` go to pytest (``nox -s tests-3.12 -- tests/unit -x``)."""

from __future__ import annotations

import nox

PYTHONS = ["3.11", "3.12", "3.13"]  # keep in step with pyproject.toml's classifiers


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *(session.posargs or ["tests"]))
