"""The package's version (pyproject.toml says the same): a module of its own, so the core reads it
without importing the package's public surface (``ngxsim/__init__.py`` imports the core)."""

__version__ = "0.1.0"
