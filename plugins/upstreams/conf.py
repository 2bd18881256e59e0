"""What the upstreams module reads from the config: ``upstream`` blocks, their ``server`` lines,
``proxy_pass`` and the ``proxy_*`` directives. Every value is checked here, with nginx's wording,
so a bad line fails ``ngxsim -t`` with its file and line."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ngxsim import parse_size, parse_time

MAX_WEIGHT = 1000
MAX_FAILS = 1000
MAX_FAIL_TIMEOUT = 86400.0
MAX_CONNS = 2**63 - 1  # nginx's ngx_atoi takes any non-negative ngx_int_t
MAX_KEEPALIVE = 65536  # idle connections a worker keeps per upstream (nginx: until malloc fails)
HTTP_VERSIONS = ("1.0", "1.1")
NEXT_UPSTREAM = ("error", "timeout", "invalid_header", "http_500", "http_502", "http_503", "http_504",
                 "http_403", "http_404", "http_429", "non_idempotent", "off")
DEFAULT_ZONE_SIZE = 256 * 1024
MIN_ZONE_SIZE = 32 * 1024


@dataclass(frozen=True)
class ServerSpec:
    """One peer: what a ``server`` line, the API's POST body or a refresh entry says."""

    host: str
    port: int
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False
    # nginx's max_conns (0: no limit; Snapshot.usable skips a peer at it). A config-only setting:
    # neither the API's fields nor the state file carry it, so it takes no part in comparing two specs
    max_conns: int = field(default=0, compare=False)

    @property
    def server(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def params(self) -> dict:
        return {"server": self.server, "weight": self.weight, "max_fails": self.max_fails,
                "fail_timeout": self.fail_timeout, "backup": self.backup, "down": self.down}

    def line(self) -> str:
        """The ``server`` line of NGINX Plus's state file for this peer."""
        parts = [self.server, f"weight={self.weight}", f"max_fails={self.max_fails}",
                 f"fail_timeout={_time_text(self.fail_timeout)}"]
        parts += ["backup"] if self.backup else []
        parts += ["down"] if self.down else []
        return "server " + " ".join(parts) + ";"


def _time_text(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9001``, ``[::1]:9001``, ``localhost:9001``: an address ngxsim can connect to
    without a resolver (IP literals and ``localhost``; names would need DNS at run time)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]/\s]+):([0-9]{1,5})", text)  # \d takes "٩"
    if not m:
        raise ValueError(f'invalid address "{text}": use HOST:PORT')
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    port_n = int(port)
    if not 1 <= port_n <= 65535:
        raise ValueError(f'invalid port in "{text}"')
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f'host "{host}" in "{text}" must be an IP address or localhost (ngxsim resolves no names)') from None
    return host, port_n


def _int_param(name: str, text: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f'invalid parameter "{name}={text}": a number from {low} to {high}')
    return int(text)


def _time_param(name: str, text: str) -> float:
    try:
        value = parse_time(text)
    except (ValueError, OverflowError):
        value = -1.0
    if not 0 <= value <= MAX_FAIL_TIMEOUT:
        raise ValueError(f'invalid parameter "{name}={text}": a time from 0 to 1d')
    return value


def parse_server(args: list[str]) -> ServerSpec:
    """``server ADDR [weight=N] [max_fails=N] [fail_timeout=T] [max_conns=N] [backup] [down]``."""
    host, port = parse_address(args[0])
    kw: dict = {}
    for arg in args[1:]:
        name, eq, value = arg.partition("=")
        if eq and name == "weight":
            kw["weight"] = _int_param(name, value, 1, MAX_WEIGHT)
        elif eq and name == "max_fails":
            kw["max_fails"] = _int_param(name, value, 0, MAX_FAILS)
        elif eq and name == "fail_timeout":
            kw["fail_timeout"] = _time_param(name, value)
        elif eq and name == "max_conns":
            if not value.isascii() or not value.isdigit():
                raise ValueError(f'invalid parameter "{arg}"')  # nginx's wording: no range given
            kw["max_conns"] = min(int(value[:20]), MAX_CONNS)
        elif not eq and arg in ("backup", "down"):
            kw[arg] = True
        else:
            raise ValueError(f'invalid parameter "{arg}"')
    return ServerSpec(host, port, **kw)


def parse_zone(args: list[str]) -> tuple[str, int]:
    name = args[0]
    if len(args) == 1:
        return name, DEFAULT_ZONE_SIZE
    try:
        size = parse_size(args[1])
    except (ValueError, OverflowError):
        size = -1
    if not MIN_ZONE_SIZE <= size <= 64 * 1024 * 1024:
        raise ValueError(f'zone "{name}" is too small or too large: give {MIN_ZONE_SIZE // 1024}k to 64m, not "{args[1]}"')
    return name, size


@dataclass(frozen=True)
class Refresh:
    file: str | None
    url: str | None
    interval: float
    timeout: float

    @property
    def source(self) -> str:
        return self.file or self.url or ""


def parse_refresh(args: list[str]) -> Refresh:
    """``upstream_refresh file=PATH|url=URL [interval=T] [timeout=T]``."""
    kw = {"file": None, "url": None, "interval": 5.0, "timeout": 2.0}
    for arg in args:
        name, eq, value = arg.partition("=")
        if not eq or name not in kw or not value:
            raise ValueError(f'invalid parameter "{arg}"')
        if name in ("interval", "timeout"):
            try:
                seconds = parse_time(value)
            except (ValueError, OverflowError):
                seconds = -1.0
            if not 0.05 <= seconds <= 86400:
                raise ValueError(f'invalid parameter "{arg}": a time from 50ms to 1d')
            kw[name] = seconds
        else:
            kw[name] = value
    if (kw["file"] is None) == (kw["url"] is None):
        raise ValueError('"upstream_refresh" needs exactly one of file=PATH or url=URL')
    if kw["url"] is not None:
        parts = urlsplit(kw["url"])
        if parts.scheme != "http" or not parts.netloc:
            raise ValueError(f'invalid url "{kw["url"]}": use http://HOST:PORT/PATH')
    return Refresh(**kw)


@dataclass(frozen=True)
class ProxyPass:
    """``proxy_pass http://NAME_OR_ADDR[/URI]``."""

    host: str  # what $proxy_host is: the group name or host[:port] as written
    upstream: str | None  # the group, when NAME names an upstream block
    address: tuple[str, int] | None  # the single backend otherwise
    uri: str | None  # the URI part (None: the request URI goes as is)
    # proxy_pass with variables: the URL, evaluated per request (dynamic.py); the fields above
    # are then those of each request's evaluation
    template: object = None

    @property
    def port(self) -> int:
        return self.address[1] if self.address else 80


def parse_proxy_pass(args: list[str]) -> ProxyPass:
    url = args[0]
    if "$" in url:  # nginx checks nothing more before the request (ngx_http_proxy_eval)
        from ngxsim import Template

        return ProxyPass("", None, None, None, Template(url))
    if url.startswith("https://"):
        raise ValueError(f'https upstreams are not supported in "proxy_pass": "{url}"')
    if not url.startswith("http://"):
        raise ValueError(f'invalid URL prefix in "{url}"')
    rest = url[len("http://"):]
    host, slash, path = rest.partition("/")
    if not host:
        raise ValueError(f'no host in "{url}"')
    uri = "/" + path if slash else None
    bare_name = not host.startswith("[") and ":" not in host
    if bare_name and not re.fullmatch(r"[\d.]+", host):
        # a name without a port: an upstream group (checked once every upstream block is known)
        return ProxyPass(host, host, None, uri)
    address = parse_address(host + ":80" if bare_name or host.endswith("]") else host)
    return ProxyPass(host, None, address, uri)


# -- connections to the peers (ngx_http_upstream_keepalive_module, proxy_http_version) -------------
# Checked with nginx's wording and kept in the module's config; what the proxy does with them is
# in docs/upstreams.md.


def parse_keepalive(args: list[str]) -> int:
    """``keepalive N``: idle connections to the group's peers each worker keeps (N > 0)."""
    text = args[0]
    if not text.isascii() or not text.isdigit() or not 0 < int(text[:10]) <= MAX_KEEPALIVE:
        raise ValueError(f'invalid value "{text}" in "keepalive" directive')
    return int(text)


def parse_keepalive_requests(args: list[str]) -> int:
    """``keepalive_requests N``: requests over one kept connection before it is closed."""
    if not args[0].isascii() or not args[0].isdigit():
        raise ValueError('"keepalive_requests" directive invalid number')  # ngx_conf_set_num_slot
    return min(int(args[0][:20]), MAX_CONNS)


def _msec(name: str):
    """A time directive with ngx_conf_set_msec_slot's wording."""

    def parse(args: list[str]) -> float:
        try:
            return parse_time(args[0])
        except (ValueError, OverflowError):
            raise ValueError(f'"{name}" directive invalid value') from None

    return parse


parse_keepalive_time = _msec("keepalive_time")
parse_keepalive_timeout = _msec("keepalive_timeout")


def parse_http_version(args: list[str]) -> str:
    """``proxy_http_version 1.0 | 1.1`` (ngx_conf_set_enum_slot's wording)."""
    if args[0] not in HTTP_VERSIONS:
        raise ValueError(f'invalid value "{args[0]}"')
    return args[0]


def parse_next_upstream(args: list[str]) -> frozenset[str]:
    for arg in args:
        if arg not in NEXT_UPSTREAM:
            raise ValueError(f'invalid value "{arg}" in "proxy_next_upstream" directive')
    if "off" in args and len(args) > 1:
        raise ValueError('"off" cannot be combined with other values in "proxy_next_upstream" directive')
    return frozenset(args)


def parse_timeout(args: list[str]) -> float:
    try:
        value = parse_time(args[0])
    except (ValueError, OverflowError):
        value = -1.0
    if not 0.001 <= value <= 3600:
        raise ValueError(f'invalid value "{args[0]}": a time from 1ms to 1h')
    return value


@dataclass(frozen=True)
class SetHeader:
    name: str
    value: object  # ngxsim.Template


def parse_set_header(args: list[str]) -> SetHeader:
    from ngxsim import Template

    name, value = args
    if not name or any(c in name for c in " \t:\r\n"):
        raise ValueError(f'invalid header name "{name}"')
    return SetHeader(name, Template(value))


@dataclass(frozen=True)
class Redirect:
    """One ``proxy_redirect`` line: ``default``, ``off`` or ``FROM TO`` (``to`` may name
    variables; ``frm`` is a literal prefix)."""

    kind: str  # "default", "off" or "rewrite"
    frm: str = ""
    to: object = None  # a Template


def parse_redirect(args: list[str]) -> Redirect:
    from ngxsim import Template

    if len(args) == 1:
        if args[0] not in ("default", "off"):
            raise ValueError('invalid number of arguments in "proxy_redirect" directive')
        return Redirect(args[0])
    frm, to = args
    if frm.startswith("~"):
        raise ValueError('"proxy_redirect" with a regular expression is not supported by ngxsim: write the '
                         'prefix it matches')
    return Redirect("rewrite", frm, Template(to))


def parse_header_name(args: list[str]) -> str:
    return args[0].lower()


@dataclass
class UpstreamConf:
    """One ``upstream`` block after the config was checked."""

    name: str
    zone: str
    zone_size: int
    servers: list[ServerSpec]
    state: str | None
    refresh: Refresh | None
    block: object = field(repr=False, default=None)
    health_checked: bool = False
    mandatory: bool = False
    keepalive: int | None = None          # idle connections kept per worker (None: none kept)
    keepalive_requests: int = 1000
    keepalive_time: float = 3600.0
    keepalive_timeout: float = 60.0

    @property
    def max_conns(self) -> dict[str, int]:
        """``server`` -> its ``max_conns`` from the config (0: no limit)."""
        return {spec.server: spec.max_conns for spec in self.servers}
