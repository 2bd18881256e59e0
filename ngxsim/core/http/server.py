"""``listen`` and ``server_name``: which server block answers a request.

For the address a request came in on, the servers listening there are searched by the Host
header in nginx's order: exact name, longest wildcard starting with ``*``, longest wildcard
ending with ``*``, first matching regex (``~``) in config order; failing that, the address's
``default_server``, else the first server listening on it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Generic, TypeVar

from .regex import Captures, Regex, to_bytes

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
    default = False  # nginx reads the address first, then the parameters
    for p in params:
        if p in ("default_server", "default"):
            default = True
        else:
            raise ValueError(f'invalid parameter "{p}"')
    return Listen(host, port, default)


def _normalize_host(host: str, addr: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f'host not found in "{addr}" of the "listen" directive (use an IP address)') from None


def parse_server_name(args: list[str]) -> list[str]:
    """The names of one ``server_name`` line as nginx keeps them: lower-cased, except a
    ``~regex`` (compiled to check it, as written); ``$hostname`` is this machine's name."""
    names = []
    for name in args:
        if (name.startswith("*") and (len(name) < 3 or name[1] != ".")) or (name.startswith(".") and len(name) < 2):
            raise ValueError(f'server name "{name}" is invalid')
        if name.lower() == "$hostname":
            name = socket.gethostname()
        if name.startswith("~"):
            if len(name) == 1:
                raise ValueError(f'empty regex in server name "{name}"')
            server_name_regex(name)
            names.append(name)
        else:
            names.append(name.lower())
    return names


def server_name_regex(name: str) -> Regex:
    # nginx compiles a server_name regex caseless only when it has an upper-case letter (the
    # host it is matched against is lower case already)
    pattern = name[1:]
    return Regex(pattern, caseless=any("A" <= c <= "Z" for c in pattern))


def primary_name(names: list[str]) -> str:
    """``$server_name``: the first name, a leading ``.`` dropped (``~`` kept on a regex)."""
    first = names[0] if names else ""
    return first[1:] if first.startswith(".") else first


class InvalidServerName(ValueError):
    """A name nginx refuses once several servers share an address; ``server``: the one giving it."""

    def __init__(self, message: str, server: object):
        super().__init__(message)
        self.server = server


class _NameIndex(Generic[T]):
    """The server_name lookup of one listen address."""

    def __init__(self) -> None:
        self.exact: dict[str, T] = {}
        self.head: list[tuple[str, T]] = []  # "*.example.com" / ".example.com" -> suffix
        self.tail: list[tuple[str, T]] = []  # "www.example.*" -> prefix
        self.regex: list[tuple[Regex, T]] = []
        self.default: T | None = None
        self.first: T | None = None
        self.servers = 0
        self.invalid: list[tuple[str, T]] = []  # nginx only checks the names of a shared address
        self.conflicts: list[str] = []
        self.where = ""

    def add(self, names: list[str], item: T, where: str) -> None:
        if self.first is None:
            self.first = item
        self.servers += 1
        self.where = where
        for name in names:
            if name.startswith("~"):
                self.regex.append((server_name_regex(name), item))
            elif name.count("*") > 1 or ".." in name:
                self.invalid.append((name, item))
            elif name.startswith("*."):
                self.head.append((name[1:], item))
            elif name.startswith("."):
                self.exact.setdefault(name[1:], item)
                self.head.append((name, item))
            elif name.endswith(".*") and "*" not in name[:-1]:
                self.tail.append((name[:-1], item))
            elif "*" in name:
                self.invalid.append((name, item))
            elif name in self.exact and self.exact[name] is not item:
                self.conflicts.append(name)  # nginx keeps the first server of a name
            else:
                self.exact[name] = item
        self.head.sort(key=lambda e: len(e[0]), reverse=True)
        self.tail.sort(key=lambda e: len(e[0]), reverse=True)

    def check(self) -> list[str]:
        """nginx checks names when it builds an address's name hash, which it does only for an
        address that several servers share; it says so without a file and line. Returns its
        warnings (a name two servers give). An invalid name raises InvalidServerName, which
        carries the server that gives it (the caller says its file and line, where nginx does not)."""
        if self.servers < 2:
            return []
        if self.invalid:
            name, item = self.invalid[0]
            raise InvalidServerName(f'invalid server name or wildcard "{name}" on {self.where}', item)
        return [f'conflicting server name "{name}" on {self.where}, ignored' for name in self.conflicts]

    def lookup(self, host: str | None) -> tuple[T | None, Captures | None]:
        if host is not None:
            hit = self.exact.get(host)
            if hit is not None:
                return hit, None
            for suffix, item in self.head:
                if host.endswith(suffix):
                    return item, None
            for prefix, item in self.tail:
                if host.startswith(prefix):
                    return item, None
            if host:
                raw = to_bytes(host)
                for regex, item in self.regex:
                    captures = regex.search(raw)
                    if captures is not None:
                        return item, captures
        return (self.default if self.default is not None else self.first), None


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
            index.add(names, item, listen.bind)
            if listen.default_server:
                if index.default is not None:
                    raise ValueError(f"a duplicate default server for {listen}")
                index.default = item
                if self._any.default is None:
                    self._any.default = item
        self._any.add(names, item, "*")

    def check(self) -> list[str]:
        """nginx's checks of each address's names: raises for an invalid one, returns warnings."""
        return [warning for index in self._by_address.values() for warning in index.check()]

    def select(self, local_ip: str, local_port: int, host: str | None) -> T | None:
        return self.find(local_ip, local_port, host)[0]

    def find(self, local_ip: str, local_port: int, host: str | None) -> tuple[T | None, Captures | None]:
        """The server for a request to that address naming ``host`` (lower case; None when the
        request names none: nginx then looks up the empty name), and what a regex captured."""
        index = self._by_address.get((local_ip, local_port)) or self._by_address.get(("*", local_port)) or self._any
        return index.lookup(host)
