"""Turn configuration text into a tree of statements, following ``include`` as nginx does.

The tree is syntax only: which directive exists, where it may stand and what its arguments
mean is checked afterwards against the directive table (see ``loader.py``), once the modules
named by ``load_module`` are known.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

from .errors import ConfigError
from .lexer import Token, tokenize

MAX_INCLUDE_DEPTH = 32
# a configuration file larger than this is refused (it is read whole, before any check)
MAX_FILE_SIZE = 16 * 1024 * 1024


@dataclass
class Sources:
    """What one load read: each file's text and each ``include`` glob's matches. Recorded by
    every ``load_configuration``; *replayed* (``replay=True``), the same load reads these
    instead of the disk, so a process started later (a service's own process, ``helper.py``)
    loads the very configuration its worker serves, whatever changed on disk since."""

    files: dict[str, str] = field(default_factory=dict)
    globs: dict[str, list[str]] = field(default_factory=dict)
    replay: bool = False


# the load in progress's Sources (None outside a load)
SOURCES: ContextVar[Sources | None] = ContextVar("ngxsim_config_sources", default=None)


@dataclass
class Statement:
    """One directive as written: ``name args... ;`` or ``name args... { block }``.

    What a directive's ``parse(args, statement)`` and a data block's ``data(statements)`` get,
    and what ``block.where_of(name)`` / ``block.statements_of(name)`` return.

    Attributes:
        name (str): the directive's name.
        args (list[str]): its arguments, unquoted (``quoted[i]`` says whether the i-th was quoted).
        file (str): the file it is in (an ``include``d file's own path), or ``"command line"``.
        line (int | None): the line where it ends (its ``;`` or ``{``), as nginx reports it;
            None for ``-g`` directives.
        block (list[Statement] | None): the statements of its ``{ }`` block; None without one.
        parent (Statement | None): the statement whose block holds it (``map $a $b {`` for a
            line of the map; ``server`` for a ``listen``); None at the top level. Set once the
            config is checked against the directive table.
    """

    name: str
    args: list[str]
    file: str
    line: int
    block: list["Statement"] | None = None
    quoted: list[bool] = field(default_factory=list)
    parent: "Statement | None" = field(default=None, repr=False, compare=False)

    def error(self, message: str) -> ConfigError:
        """A ConfigError pointing at this statement."""
        return ConfigError(message, self.file, self.line)


def parse_file(path: str, _depth: int = 0, _root: str | None = None, _where: Statement | None = None) -> list[Statement]:
    """Parse the file at ``path``. A relative ``include`` is resolved, as nginx does, against
    the folder of the main configuration file (``_root``; the file's own folder for the main
    file), whichever file names it. ``_where`` is the ``include`` that names the file: a file
    that cannot be read is reported at that line."""
    sources = SOURCES.get()
    if sources is not None and sources.replay:
        text = sources.files.get(path)
        if text is None:
            raise ConfigError(f'"{path}" is not a file of the configuration being loaded again')
    else:
        text = read_config_file(path, _where)
        if sources is not None:
            sources.files[path] = text
    return parse_text(text, path, _depth, _root)


def read_config_file(path: str, where: Statement | None = None) -> str:
    """The text of a configuration file: a regular file of at most ``MAX_FILE_SIZE`` bytes of
    UTF-8. Anything else (a directory, a device such as /dev/zero, a FIFO) is a ConfigError."""

    def fail(message: str, file: str | None = None, line: int | None = None) -> ConfigError:
        if file is None and where is not None:
            return where.error(message)
        return ConfigError(message, file, line)

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise fail(f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise fail(f'open() "{path}" failed ({errno.EISDIR}: {os.strerror(errno.EISDIR)})')
        if not stat.S_ISREG(mode):
            raise fail(f'"{path}" is not a regular file')
        chunks, size = [], 0
        while size <= MAX_FILE_SIZE:  # the size may change while it is read: count what arrives
            chunk = os.read(fd, MAX_FILE_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise fail(f'read() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    finally:
        os.close(fd)
    if size > MAX_FILE_SIZE:
        raise fail(f'"{path}" is larger than {MAX_FILE_SIZE} bytes')
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise fail(f"invalid UTF-8 (byte 0x{data[exc.start]:02x}: {exc.reason})", path, line) from None


def parse_text(text: str, file: str, _depth: int = 0, _root: str | None = None) -> list[Statement]:
    """Parse configuration ``text``; ``file`` names it in errors and anchors relative includes."""
    tokens = tokenize(text, file)
    last_line = text.count("\n") + 1  # nginx counts the line after the last newline too
    root = _root if _root is not None else os.path.dirname(os.path.abspath(file))
    return _Parser(tokens, file, last_line, _depth, root).parse()


class _Parser:
    def __init__(self, tokens: Iterator[Token], file: str, last_line: int, depth: int, root: str):
        self.tokens = tokens
        self.file = file
        self.last_line = max(last_line, 1)
        self.depth = depth
        self.root = root

    def parse(self) -> list[Statement]:
        """The statements of the file. Iterative (an explicit stack of open blocks): a file of a
        thousand nested ``{`` must give a ConfigError, never exhaust Python's stack.

        A syntax error carries the statements read before it as ``error.partial`` (the blocks
        still open hold what was read of them): nginx runs each directive as soon as it has
        read it, so a mistake in one of them is reported before a syntax error further on
        (the loader checks ``partial`` first)."""
        top: list[Statement] = []
        try:
            self._parse(top)
        except ConfigError as exc:
            exc.partial = top
            raise
        return top

    def _parse(self, top: list[Statement]) -> None:
        stmts = top  # the statement list of the innermost open block
        open_blocks: list[list[Statement]] = []  # the enclosing lists, innermost last
        words: list[Token] = []
        for tok in self.tokens:
            if not tok.special:
                words.append(tok)
                continue
            if tok.value == "}":
                if words or not open_blocks:
                    raise ConfigError('unexpected "}"', self.file, tok.line)
                stmts = open_blocks.pop()
                continue
            if not words:
                raise ConfigError(f'unexpected "{tok.value}"', self.file, tok.line)
            stmt = Statement(
                # nginx names the line where a statement ends (its ";" or "{")
                words[0].value, [w.value for w in words[1:]], self.file, tok.line,
                quoted=[w.quoted for w in words[1:]],
            )
            words = []
            if tok.value == "{":
                stmt.block = []
                stmts.append(stmt)
                open_blocks.append(stmts)
                stmts = stmt.block
            elif stmt.name == "include":
                try:
                    stmts.extend(self.include(stmt))
                except ConfigError as exc:  # what the included files held before their error
                    stmts.extend(exc.partial or ())
                    raise
            else:
                stmts.append(stmt)
        if words:
            raise ConfigError('unexpected end of file, expecting ";" or "}"', self.file, self.last_line)
        if open_blocks:
            raise ConfigError('unexpected end of file, expecting "}"', self.file, self.last_line)

    def include(self, stmt: Statement) -> list[Statement]:
        if len(stmt.args) != 1:
            raise stmt.error('invalid number of arguments in "include" directive')
        if self.depth >= MAX_INCLUDE_DEPTH:
            raise stmt.error(f'include nesting deeper than {MAX_INCLUDE_DEPTH} levels (a loop?)')
        pattern = stmt.args[0]
        if "\x00" in pattern:  # no file name holds a NUL byte (and open() and glob() refuse one)
            shown = pattern.replace("\x00", "\\0")
            raise stmt.error(f'open() "{shown}" failed ({errno.EINVAL}: {os.strerror(errno.EINVAL)})')
        if not os.path.isabs(pattern):
            pattern = os.path.join(self.root, pattern)
        sources = SOURCES.get()
        if glob.has_magic(pattern):
            if sources is not None and sources.replay:
                paths = sources.globs.get(pattern, [])
            else:
                paths = sorted(glob.glob(pattern))  # nginx: a glob matching nothing is fine
                if sources is not None:
                    sources.globs[pattern] = paths
        else:
            paths = [pattern]
        out: list[Statement] = []
        for path in paths:
            try:
                out.extend(parse_file(path, self.depth + 1, self.root, stmt))
            except ConfigError as exc:  # the files read before, and what this one held before its error
                exc.partial = out + (exc.partial or [])
                raise
        return out
