"""Turn configuration text into a tree of statements, following ``include`` as nginx does.

The tree is syntax only: which directive exists, where it may stand and what its arguments
mean is checked afterwards against the directive table (see ``loader.py``), once the modules
named by ``load_module`` are known.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Iterator

from .errors import ConfigError
from .lexer import Token, tokenize

MAX_INCLUDE_DEPTH = 32


@dataclass
class Statement:
    """One directive as written: ``name args... ;`` or ``name args... { block }``."""

    name: str
    args: list[str]
    file: str
    line: int
    block: list["Statement"] | None = None
    quoted: list[bool] = field(default_factory=list)

    def error(self, message: str) -> ConfigError:
        """A ConfigError pointing at this statement."""
        return ConfigError(message, self.file, self.line)


def parse_file(path: str, _depth: int = 0, _root: str | None = None) -> list[Statement]:
    """Parse the file at ``path``. A relative ``include`` is resolved, as nginx does, against
    the folder of the main configuration file (``_root``; the file's own folder for the main
    file), whichever file names it."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f'"{path}" is not valid UTF-8 ({exc.reason})') from None
    return parse_text(text, path, _depth, _root)


def parse_text(text: str, file: str, _depth: int = 0, _root: str | None = None) -> list[Statement]:
    """Parse configuration ``text``; ``file`` names it in errors and anchors relative includes."""
    tokens = tokenize(text, file)
    last_line = text.count("\n") + 1  # nginx counts the line after the last newline too
    root = _root if _root is not None else os.path.dirname(os.path.abspath(file))
    return _Parser(tokens, file, last_line, _depth, root).block(inside=False)


class _Parser:
    def __init__(self, tokens: Iterator[Token], file: str, last_line: int, depth: int, root: str):
        self.tokens = tokens
        self.file = file
        self.last_line = max(last_line, 1)
        self.depth = depth
        self.root = root

    def block(self, inside: bool) -> list[Statement]:
        stmts: list[Statement] = []
        words: list[Token] = []
        for tok in self.tokens:
            if not tok.special:
                words.append(tok)
                continue
            if tok.value == "}":
                if words or not inside:
                    raise ConfigError('unexpected "}"', self.file, tok.line)
                return stmts
            if not words:
                raise ConfigError(f'unexpected "{tok.value}"', self.file, tok.line)
            stmt = Statement(
                # nginx names the line where a statement ends (its ";" or "{")
                words[0].value, [w.value for w in words[1:]], self.file, tok.line,
                quoted=[w.quoted for w in words[1:]],
            )
            words = []
            if tok.value == "{":
                stmt.block = self.block(inside=True)
                stmts.append(stmt)
            elif stmt.name == "include":
                stmts.extend(self.include(stmt))
            else:
                stmts.append(stmt)
        if words:
            raise ConfigError('unexpected end of file, expecting ";" or "}"', self.file, self.last_line)
        if inside:
            raise ConfigError('unexpected end of file, expecting "}"', self.file, self.last_line)
        return stmts

    def include(self, stmt: Statement) -> list[Statement]:
        if len(stmt.args) != 1:
            raise stmt.error('invalid number of arguments in "include" directive')
        if self.depth >= MAX_INCLUDE_DEPTH:
            raise stmt.error(f'include nesting deeper than {MAX_INCLUDE_DEPTH} levels (a loop?)')
        pattern = stmt.args[0]
        if not os.path.isabs(pattern):
            pattern = os.path.join(self.root, pattern)
        if glob.has_magic(pattern):
            paths = sorted(glob.glob(pattern))  # nginx: a glob matching nothing is fine
        else:
            if not os.path.exists(pattern):
                raise stmt.error(f'open() "{pattern}" failed (2: No such file or directory)')
            paths = [pattern]
        out: list[Statement] = []
        for path in paths:
            out.extend(parse_file(path, self.depth + 1, self.root))
        return out
