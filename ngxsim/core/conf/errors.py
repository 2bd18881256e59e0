"""The one exception a configuration problem raises, worded like nginx's."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration is invalid.

    ``str(err)`` reads like nginx's ``[emerg]`` line: ``unknown directive "x" in /p/a.conf:3``.
    ``message`` is the bare text; ``file``/``line`` say where (both may be None when the
    problem is not tied to one place, e.g. a zone that no directive declares).
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        # a syntax error: the statements read before it (see parser.py), else None
        self.partial: list | None = None
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.message} in {self.file}"
        return f"{self.message} in {self.file}:{self.line}"
