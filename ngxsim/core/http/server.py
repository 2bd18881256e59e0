"""``listen`` and ``server_name``: which server block answers a request.

For the address a request came in on, the servers listening there are searched by the Host
header in nginx's order: exact name, longest wildcard starting with ``*``, longest wildcard
ending with ``*``, first matching regex (``~``) in config order; failing that, the address's
``default_server``, else the first server listening on it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from .location import compile_pcre

T = TypeVar("T")

DEFAULT_PORT = 8080


@dataclass(frozen=True)
class Listen:
    host: str  # "*" for every address
    port: int
    default_server: bool = False

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def bind(self) -> str:
        """The address as gunicorn's ``bind`` setting spells it."""
        host = "0.0.0.0" if self.host == "*" else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.bind


def parse_listen(args: list[str]) -> Listen:
    """``listen [ADDR:]PORT [default_server]`` / ``listen ADDR [default_server]``."""
    addr, *params = args
    default = False
    for p in params:
        if p in ("default_server", "default"):
            default = True
        else:
            raise ValueError(f'invalid parameter "{p}"')
    host, port = "*", DEFAULT_PORT
    if addr.startswith("["):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]+))?", addr)
        if not m:
            raise ValueError(f'invalid host in "{addr}" of the "listen" directive')
        if m.group(2) and len(m.group(2)) > 5:
            raise ValueError(f'invalid port in "{addr}" of the "listen" directive')
        host, port = m.group(1), int(m.group(2) or DEFAULT_PORT)
    elif re.fullmatch(r"[0-9]+", addr):
        if len(addr) > 5:
            raise ValueError(f'invalid port in "{addr}" of the "listen" directive')
        port = int(addr)
    elif ":" in addr:
        host, _, p = addr.rpartition(":")
        if not re.fullmatch(r"[0-9]{1,5}", p):
            raise ValueError(f'invalid port in "{addr}" of the "listen" directive')
        port = int(p)
    else:
        host = addr
    if not 0 < port < 65536:
        raise ValueError(f'invalid port in "{addr}" of the "listen" directive')
    if host != "*":
        host = _normalize_host(host, addr)
    return Listen(host, port, default)


def _normalize_host(host: str, addr: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f'host not found in "{addr}" of the "listen" directive (use an IP address)') from None


def parse_server_name(args: list[str]) -> list[str]:
    """Check the names of one ``server_name`` line (wildcards only at an end, valid regexes)."""
    for name in args:
        if name.startswith("~"):
            try:
                compile_pcre(name[1:], re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f'invalid server_name regex "{name}": {exc}') from None
        elif "*" in name and not (name.startswith("*.") or name.endswith(".*")) or name.count("*") > 1:
            raise ValueError(f'invalid server name or wildcard "{name}"')
    return list(args)


class _NameIndex(Generic[T]):
    """The server_name lookup of one listen address."""

    def __init__(self) -> None:
        self.exact: dict[str, T] = {}
        self.head: list[tuple[str, T]] = []  # "*.example.com" / ".example.com" -> suffix
        self.tail: list[tuple[str, T]] = []  # "www.example.*" -> prefix
        self.regex: list[tuple[re.Pattern, T]] = []
        self.default: T | None = None
        self.first: T | None = None

    def add(self, names: list[str], item: T) -> None:
        if self.first is None:
            self.first = item
        for name in names:
            if name.startswith("~"):  # as written: lower-casing would change \D to \d
                self.regex.append((compile_pcre(name[1:], re.IGNORECASE), item))
                continue
            name = name.lower()
            if name.startswith("*."):
                self.head.append((name[1:], item))
            elif name.startswith("."):
                self.exact.setdefault(name[1:], item)
                self.head.append((name, item))
            elif name.endswith(".*"):
                self.tail.append((name[:-1], item))
            elif name and name != "_":
                self.exact.setdefault(name, item)
        self.head.sort(key=lambda e: len(e[0]), reverse=True)
        self.tail.sort(key=lambda e: len(e[0]), reverse=True)

    def lookup(self, host: str) -> T | None:
        if host:
            hit = self.exact.get(host)
            if hit is not None:
                return hit
            for suffix, item in self.head:
                if host.endswith(suffix):
                    return item
            for prefix, item in self.tail:
                if host.startswith(prefix):
                    return item
            for regex, item in self.regex:
                if regex.search(host):
                    return item
        return self.default if self.default is not None else self.first


class ServerTable(Generic[T]):
    """All servers of an ``http`` block, by listen address and name."""

    def __init__(self) -> None:
        self._by_address: dict[tuple[str, int], _NameIndex[T]] = {}
        self._any = _NameIndex[T]()  # for a bind the config does not name (gunicorn -b ...)

    def add(self, listens: list[Listen], names: list[str], item: T) -> None:
        seen: set[tuple[str, int]] = set()
        for listen in listens:
            if listen.address in seen:
                raise ValueError(f'duplicate listen {listen}')
            seen.add(listen.address)
            index = self._by_address.setdefault(listen.address, _NameIndex())
            index.add(names, item)
            if listen.default_server:
                if index.default is not None:
                    raise ValueError(f"a duplicate default server for {listen}")
                index.default = item
                if self._any.default is None:
                    self._any.default = item
        self._any.add(names, item)

    def select(self, local_ip: str, local_port: int, host: str) -> T | None:
        index = self._by_address.get((local_ip, local_port)) or self._by_address.get(("*", local_port)) or self._any
        return index.lookup(host.lower())
