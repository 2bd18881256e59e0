"""``cluster_bridge``: one event zone bridged to one stream of one engine (http level).

    cluster_bridge ZONE URL channels=NAME[,NAME...]|* state=DIR [stream=NAME] [instance=ID]
                   [retention=N] [password_file=PATH] [timeout=TIME]
                   [tls_ca=PATH] [tls_cert=PATH tls_key=PATH] [relay_nice=N];

Everything is checked when the configuration loads (``ngxsim -t`` included) without connecting:
the URL (scheme, host, port, database), that no password is written in it, that the password
file and the state folder are there, that the TLS files load (with a ``rediss://`` or ``tls://``
URL only), the channels, the names. Errors name the file and line.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from dataclasses import dataclass, field

from ngxsim import OutOfRange, parse_number, parse_time

from .engine import Tls, redact_url
from .engines import engine_class

DEFAULT_RETENTION = 100_000
DEFAULT_TIMEOUT = 2.0
# the relay's process runs this much below the workers' priority (docs/cluster.md, "The relay's
# own process"): while they are busy the kernel gives it what they leave
DEFAULT_RELAY_NICE = 10
CHANNEL_MAX = 64
INSTANCE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
STREAM = re.compile(r"[A-Za-z0-9._:{}-]{1,200}")  # braces: a Redis Cluster hash tag
_PARAMS = ("channels", "state", "stream", "instance", "retention", "password_file", "timeout", "tls_ca", "tls_cert",
           "tls_key", "relay_nice")


@dataclass(frozen=True)
class Bridge:
    """One ``cluster_bridge`` line, checked."""

    zone: str
    url: str
    channels: tuple[str, ...] | None  # None: every channel ("*")
    state_dir: str
    stream: str
    instance: str | None  # None: derived from the host name and the first listen address
    retention: int = DEFAULT_RETENTION
    password_file: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    engine: str = field(default="", compare=False)  # the URL, redacted
    tls: Tls | None = None  # the TLS files given (None: none, the system's CAs on a TLS URL)
    relay_nice: int = DEFAULT_RELAY_NICE  # the relay's process below the workers' priority

    def bridges(self, channel: str) -> bool:
        """Is ``channel`` sent across? (``@``-channels are worker_events' own: never.)"""
        return not channel.startswith("@") and (self.channels is None or channel in self.channels)

    def make_engine(self):
        """A new, unconnected engine of this bridge (its password file read now)."""
        return engine_class(self.url)(self.url, self.stream, retention=self.retention, password=self.password(),
                                      timeout=self.timeout, tls=self.tls)

    def password(self) -> str | None:
        """The password file's first line (read at each connect: a rotated password is used)."""
        if self.password_file is None:
            return None
        with open(self.password_file, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")


def _fail(message: str) -> ValueError:
    return ValueError(f'{message} in "cluster_bridge" directive')


def parse_bridge(args: list[str]) -> Bridge:
    if len(args) < 2:
        raise ValueError('invalid number of arguments in "cluster_bridge" directive')
    zone, url = args[0], args[1]
    engine = redact_url(url)
    try:
        cls = engine_class(url)
    except ValueError as exc:
        raise _fail(f'{exc}: "{engine}"') from None
    except ImportError as exc:
        if (exc.name or "").startswith(__package__ + ".engines."):
            raise _fail(f'no engine module for "{engine}" in this installation ({exc.name})') from None
        raise _fail(f'the engine of "{engine}" needs its client library ({exc.name or exc}): '
                    "pip install 'ngxsim[cluster]'") from None
    _, _, rest = url.partition("://")
    for host in rest.split(","):
        cred = host.rpartition("@")[0]
        if ":" in cred:
            raise _fail(f'a password in the engine URL "{engine}": put it in a file and name it with '
                        '"password_file=PATH" (the URL is shown in logs and the API)')
    problem = cls.check_url(url)
    if problem:
        raise _fail(f'invalid engine URL "{engine}": {problem}')
    params: dict[str, str] = {}
    for arg in args[2:]:
        name, eq, value = arg.partition("=")
        if not eq or name not in _PARAMS:
            raise _fail(f'invalid parameter "{arg}" (known: {", ".join(p + "=" for p in _PARAMS)})')
        if name in params:
            raise _fail(f'duplicate parameter "{name}="')
        params[name] = value
    for needed in ("channels", "state"):
        if needed not in params:
            raise _fail(f'"{needed}=" is required')
    return Bridge(zone, url, _channels(params["channels"]), _state_dir(params["state"]),
                  _name(params.get("stream", f"ngxsim.{zone}"), STREAM, "stream", 200, ", \"{\", \"}\""),
                  _name(params["instance"], INSTANCE, "instance", 64) if "instance" in params else None,
                  _value(params, "retention", DEFAULT_RETENTION, lambda t: parse_number(t, 100, 1_000_000_000),
                         "a number of entries from 100 to 1000000000"),
                  _password_file(params.get("password_file")),
                  _value(params, "timeout", DEFAULT_TIMEOUT, lambda t: parse_time(t, 0.05, 60),
                         "a time from 50ms to 60s"),
                  engine, _tls(params, cls.tls_schemes, url, engine),
                  _value(params, "relay_nice", DEFAULT_RELAY_NICE, lambda t: parse_number(t, 0, 19),
                         "from 0 to 19 (how far below the workers' priority the relay runs)"))


def _tls(params: dict[str, str], tls_schemes: tuple[str, ...], url: str, engine: str) -> Tls | None:
    given = {name: params[name] for name in ("tls_ca", "tls_cert", "tls_key") if name in params}
    if not given:
        return None
    if url.partition("://")[0].lower() not in tls_schemes:
        named = ", ".join(f'"{name}="' for name in given)
        raise _fail(f'{named} with "{engine}": the engine URL of a TLS connection is '
                    f'{" or ".join(s + "://" for s in tls_schemes)}')
    if ("tls_cert" in given) != ("tls_key" in given):
        raise _fail('"tls_cert=" and "tls_key=" go together (this instance\'s certificate and its key)')
    paths = {}
    for name, path in given.items():
        if not path:
            raise _fail(f'empty "{name}="')
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise _fail(f'cannot read "{name}={path}" ({exc.errno}: {exc.strerror})') from None
        paths[name] = os.path.abspath(path)
    tls = Tls(paths.get("tls_ca"), paths.get("tls_cert"), paths.get("tls_key"))
    if tls.ca is not None:
        try:
            ssl.create_default_context(cafile=tls.ca)
        except ssl.SSLError as exc:
            raise _fail(f'"tls_ca={given["tls_ca"]}" holds no usable certificate ({exc.reason or exc})') from None
    if tls.cert is not None:
        try:
            ssl.create_default_context().load_cert_chain(tls.cert, tls.key)
        except ssl.SSLError as exc:
            raise _fail(f'"tls_cert={given["tls_cert"]}" and "tls_key={given["tls_key"]}" are not a certificate and '
                        f'its key ({exc.reason or exc})') from None
    return tls


def _channels(text: str) -> tuple[str, ...] | None:
    if text == "*":
        return None
    names = text.split(",")
    for name in names:
        size = len(name.encode())
        if not 0 < size <= CHANNEL_MAX:
            raise _fail(f'invalid channel "{name}" in "channels=": 1 to {CHANNEL_MAX} bytes')
        if name.startswith("@") or name == "*":
            raise _fail(f'invalid channel "{name}" in "channels=" ("@" channels are worker_events\' own; '
                        '"*" alone means every channel)')
    return tuple(dict.fromkeys(names))


def _name(text: str, pattern: re.Pattern, what: str, most: int, more: str = "") -> str:
    if not pattern.fullmatch(text):
        raise _fail(f'invalid {what} "{text}": 1 to {most} of letters, digits, ".", "_", ":"{more} and "-"')
    return text


def _value(params: dict[str, str], name: str, default, parse, expected: str):
    """Parameter ``name=`` parsed (``default`` when not given), or the error saying what is
    ``expected`` of it."""
    text = params.get(name)
    if text is None:
        return default
    try:
        return parse(text)
    except (OutOfRange, ValueError):
        raise _fail(f'invalid "{name}={text}": {expected}') from None


def _password_file(path: str | None) -> str | None:
    if path is None:
        return None
    if not path:
        raise _fail('empty "password_file="')
    try:
        with open(path, encoding="utf-8") as fh:
            if not fh.readline().rstrip("\r\n"):
                raise _fail(f'password file "{path}" is empty')
    except OSError as exc:
        raise _fail(f'cannot read password file "{path}" ({exc.errno}: {exc.strerror})') from None
    return os.path.abspath(path)


def _state_dir(path: str) -> str:
    if not path:
        raise _fail('empty "state="')
    if not os.path.isdir(path):
        raise _fail(f'state folder "{path}" does not exist (create it: the relay keeps its position there)')
    if not os.access(path, os.W_OK | os.X_OK):
        raise _fail(f'state folder "{path}" is not writable')
    return os.path.abspath(path)


def default_instance(config) -> str:
    """The host name and the first listen address of the first server: stable across restarts,
    different for two instances on one host."""
    host = socket.gethostname().split(".")[0] or "localhost"
    for server in config.blocks("server"):
        for listen in server.get("listen") or ():
            where = f"{host}-{'0.0.0.0' if listen.host == '*' else listen.host}:{listen.port}"
            return re.sub(r"[^A-Za-z0-9._:-]", "_", where)[:64]
    return re.sub(r"[^A-Za-z0-9._:-]", "_", host)[:64]
