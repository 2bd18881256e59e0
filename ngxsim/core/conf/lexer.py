"""Tokenizer for nginx's configuration syntax.

Rules follow ``ngx_conf_read_token``: words are separated by white space; ``;`` and ``{`` end
a word and are tokens of their own; ``}`` is a token where a word would start (inside a word it
is an ordinary character: ``${name}`` stays whole, ``a}`` is a word); ``#`` starts a
comment when it starts a word; single and double quotes group a word and understand ``\\"``,
``\\'``, ``\\\\``, ``\\n``, ``\\r`` and ``\\t``; a ``{`` right after ``$`` stays in the word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .errors import ConfigError

SPECIAL = ";{}"
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class Token:
    value: str
    line: int
    quoted: bool = False

    @property
    def special(self) -> bool:
        return not self.quoted and self.value in SPECIAL


def tokenize(text: str, file: str) -> Iterator[Token]:
    """Yield the tokens of ``text``; ``file`` only serves error messages."""
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch in " \t\r":
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch in SPECIAL:
            yield Token(ch, line)
            i += 1
        elif ch in "\"'":
            start_line, quote = line, ch
            i += 1
            start = i
            while True:
                if i >= n:  # nginx: the file ended inside a statement, on its last line
                    raise ConfigError('unexpected end of file, expecting ";" or "}"', file, text.count("\n") + 1)
                c = text[i]
                if c == "\\" and i + 1 < n:
                    line += text[i + 1] == "\n"
                    i += 2
                    continue
                if c == quote:
                    break
                line += c == "\n"
                i += 1
            raw = text[start:i]
            i += 1
            # nginx wants a separator right after a closing quote
            if i < n and text[i] not in " \t\r\n;{":
                raise ConfigError(f'unexpected "{text[i]}"', file, line)
            yield Token(unescape(raw), start_line, quoted=True)
        else:
            start, start_line = i, line
            while i < n:
                c = text[i]
                if c in " \t\r\n;{":
                    if c == "{" and i > start and text[i - 1] == "$":
                        i += 1  # "${name}": the variable's brace, not a block
                        continue
                    break
                i += 2 if c == "\\" and i + 1 < n else 1
            yield Token(unescape(text[start:i]), start_line)


def unescape(raw: str) -> str:
    """nginx's escapes: ``\\" \\' \\\\`` lose the backslash, ``\\n \\r \\t`` become the
    character, any other backslash stays (so a regex's ``\\.`` survives)."""
    if "\\" not in raw:
        return raw
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw) and raw[i + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)
