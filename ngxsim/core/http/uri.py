"""The request target and the Host header, parsed and checked as nginx does.

nginx decodes the path's ``%XX`` escapes, merges slashes and resolves ``.`` and ``..``
(``ngx_http_parse_complex_uri``), and refuses with 400 what it cannot make a path of: a ``%``
without two hex digits, ``%00``, ``..`` above the root, a target that is neither ``/path`` nor
``scheme://host/path`` (``OPTIONS *``). A decoded ``%2F`` or ``%2E`` counts as the character it
stands for. The result is bytes (nginx's ``$uri``), read as UTF-8 where a string is needed.
The Host header (or the host of an absolute-form target, which wins over it) is checked and
lower-cased as ``ngx_http_validate_host`` does.
"""

from __future__ import annotations

import re

_HEX = b"0123456789abcdefABCDEF"
# absolute-form: scheme "://" host [":" port] [path-or-query]
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://(\[[A-Za-z0-9:._~!$&'()*+,;=-]*\]|[A-Za-z0-9.-]*)(?::\d*)?([/?].*)?", re.S)


class BadRequest(ValueError):
    """nginx would answer 400: the message says why (nginx's error log wording)."""


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    """``(path, host_from_line)`` of a request target: origin-form or absolute-form."""
    if target.startswith(b"/"):
        return target, None
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        raise BadRequest("client sent invalid request")
    path = m.group(2) or b"/"
    if path.startswith(b"?"):
        path = b"/" + path
    return path, m.group(1)


def parse_path(target: bytes, merge_slashes: bool = True) -> tuple[bytes, bytes]:
    """``(uri, args)`` of an origin-form target: the decoded, normalised path and the raw
    query (after the first ``?``, before a ``#``). Raises BadRequest as nginx answers 400."""
    path, _, args = target.partition(b"?")
    if b"%" not in path and b"/." not in path and b"//" not in path and b"#" not in target:
        return path, args  # nothing to decode or resolve: nginx uses it as it came, so do we
    out = bytearray()
    args = b""
    state = "usual"  # usual, slash, dot, dot_dot
    i, n = 0, len(target)
    while i < n:
        ch = target[i]
        i += 1
        if ch == 0x25:  # "%": nginx decodes first, then treats the character as if sent raw
            if i + 2 > n or target[i] not in _HEX or target[i + 1] not in _HEX:
                raise BadRequest("client sent invalid request")
            ch = int(target[i : i + 2], 16)
            i += 2
            if ch == 0:
                raise BadRequest("client sent invalid request")
            if ch in (0x25, 0x23, 0x3F):  # a decoded "%", "#" or "?" is a plain character
                out.append(ch)
                state = "usual"
                continue
        elif ch == 0x3F:  # "?": the arguments start, up to a "#"
            hash_at = target.find(b"#", i)
            args = target[i:] if hash_at < 0 else target[i:hash_at]
            break
        elif ch == 0x23:  # "#": the rest is a fragment
            break
        state = _step(out, state, ch, merge_slashes)
    return _finish(out, state), args


def _step(out: bytearray, state: str, ch: int, merge_slashes: bool) -> str:
    if ch == 0x2F:  # "/"
        if state == "slash":
            if not merge_slashes:
                out.append(ch)
            return "slash"
        if state == "dot":
            out.pop()  # "/./" -> "/"
            return "slash"
        if state == "dot_dot":
            _up(out)
            return "slash"
        out.append(ch)
        return "slash"
    if ch == 0x2E:  # "."
        if state == "slash":
            out.append(ch)
            return "dot"
        if state == "dot":
            out.append(ch)
            return "dot_dot"
    out.append(ch)
    return "usual"


def _up(out: bytearray) -> None:
    """``/a/b/..`` -> ``/a/``: drop the ``/..`` and the segment before it; none above ``/``."""
    del out[-3:]  # the "/.." just written ("..") and its slash
    cut = out.rfind(b"/")
    if cut < 0 or not out:
        raise BadRequest("client sent invalid request")
    del out[cut + 1 :]


def _finish(out: bytearray, state: str) -> bytes:
    if state == "dot":
        out.pop()
    elif state == "dot_dot":
        _up(out)
    return bytes(out)


# the usual Host: dot-separated labels, one trailing dot at most, a numeric port at most —
# what validate_host's loop accepts as it is; anything else goes through the loop
_PLAIN_HOST = re.compile(rb"((?:[0-9A-Za-z_-]+\.)*[0-9A-Za-z_-]+)\.?(?::[0-9]*)?")


def validate_host(raw: bytes) -> bytes:
    """The host part of a Host value, lower-cased, without port and trailing dot; raises
    BadRequest as nginx does for an empty host, ``..``, ``/``, spaces or control bytes."""
    plain = _PLAIN_HOST.fullmatch(raw)
    if plain is not None:
        return plain.group(1).lower()
    return _host_as_nginx_reads_it(raw)


def _host_as_nginx_reads_it(raw: bytes) -> bytes:
    """ngx_http_validate_host, byte by byte (validate_host's shortcut must agree with it)."""
    dot_pos = -2
    host_len = len(raw)
    state = "usual"
    for i, ch in enumerate(raw):
        if ch == 0x2E:
            if dot_pos == i - 1:
                raise BadRequest("client sent invalid host header")
            dot_pos = i
        elif ch == 0x3A:
            if state == "usual":
                host_len = i
                state = "rest"
        elif ch == 0x5B:
            if i == 0:
                state = "literal"
        elif ch == 0x5D:
            if state == "literal":
                host_len = i + 1
                state = "rest"
        elif ch == 0x2F or ch <= 0x20 or ch == 0x7F:
            raise BadRequest("client sent invalid host header")
    if dot_pos == host_len - 1:
        host_len -= 1
    if host_len <= 0:
        raise BadRequest("client sent invalid host header")
    return raw[:host_len].lower()
