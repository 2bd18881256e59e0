"""``proxy_pass`` with variables: the URL is made per request and read as nginx 1.22 reads it
(``ngx_http_proxy_eval``, ``ngx_parse_url`` with ``no_resolve``, ``ngx_http_upstream_init_request``).

- ``http://`` (any case) and at least one character after it, else ``invalid URL prefix in
  "URL"`` and 500; ``https://`` is nginx's TLS, which ngxsim does not speak: 500 and a line
  saying so.
- The host ends at the first ``/`` or ``?`` (the URI part: sent *as given*, no location prefix
  replaced, no query added; ``?a`` alone is sent as ``/?a``); ``:PORT`` before it (1-65535, else
  ``invalid port in upstream "..."``, 500); no host: ``no host in upstream "..."``, 500.
- Without a URI part the client's URI goes as it sent it (``$request_uri``).
- The host names an ``upstream`` block (any case) and no port is given: that group. A host and
  port some static ``proxy_pass`` of the config names (nginx's implicit upstream of it): that
  address. An IPv4 literal (``[IPv6]`` too): that address, port 80 by default. Anything else
  needs a ``resolver`` in nginx, which ngxsim does not have: nginx's answer without one, 502 and
  ``no resolver defined to resolve NAME``.
- ``$proxy_host`` is the host, with ``:PORT`` when a port other than 80 was given; ``$proxy_port``
  the port (``80`` without one).
"""

from __future__ import annotations

import ipaddress
import logging

from ngxsim import error_context, error_page

from .conf import ProxyPass

log = logging.getLogger("ngxsim")
_STASH = "upstreams.proxy_pass"  # ctx.stash: this request's evaluation (ProxyPass or an answer)


class Refused(Exception):
    """The evaluated URL cannot be proxied: nginx's ``status`` and error line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def evaluate(url: str, groups: dict[str, str], implicit: dict[tuple[str, int], tuple[str, int]]) -> ProxyPass:
    """The request's ``ProxyPass`` for the evaluated ``url``. ``groups``: the upstream blocks'
    names by their lower case; ``implicit``: the static ``proxy_pass`` addresses by (lower-case
    host, port). Raises ``Refused``."""
    lower = url[:8].lower()
    if lower.startswith("https://") and len(url) > 8:
        raise Refused(500, f'https upstreams are not supported by ngxsim in "{url}"')
    if not (lower.startswith("http://") and len(url) > 7):
        raise Refused(500, f'invalid URL prefix in "{url}"')
    rest = url[7:]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    hostport, uri = rest[:cut], rest[cut:] or None
    if uri is not None and uri.startswith("?"):
        uri = "/" + uri
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise Refused(500, f'invalid host in upstream "{rest}"')
        host, after = hostport[:end + 1], hostport[end + 1:]
        if after and not after.startswith(":"):
            raise Refused(500, f'invalid host in upstream "{rest}"')
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = hostport.partition(":")
        port_text = port_text if colon else None
    if port_text is not None:
        port = int(port_text) if port_text.isascii() and port_text.isdigit() else 0
        if not 1 <= port <= 65535:
            raise Refused(500, f'invalid port in upstream "{rest}"')
    if not host:
        raise Refused(500, f'no host in upstream "{rest}"')
    shown = host if port is None or port == 80 else f"{host}:{port_text}"
    if port is None and host.lower() in groups:
        return ProxyPass(shown, groups[host.lower()], None, uri)
    address = implicit.get((host.lower(), port or 80))
    if address is None:
        address = _literal(host, port or 80)
    if address is None:
        raise Refused(502, f"no resolver defined to resolve {host}")
    return ProxyPass(shown, None, address, uri)


def _literal(host: str, port: int) -> tuple[str, int] | None:
    """An IP literal as ``ngx_inet_addr`` (dotted IPv4) or ``[IPv6]`` takes it."""
    text = host[1:-1] if host.startswith("[") else host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if host.startswith("[") != (ip.version == 6):
        return None
    return text, port


def current(ctx, spec: ProxyPass, groups, implicit) -> ProxyPass | None:
    """The request's ``ProxyPass`` (evaluated once per request); None when it cannot be proxied
    (``answer`` gives nginx's response, its error line written once)."""
    if spec.template is None:
        return spec
    done = ctx.stash.get(_STASH)
    if done is None:
        url = spec.template.render(ctx)
        try:
            done = evaluate(url, groups, implicit)
        except Refused as refused:
            log.error("%s%s", refused, error_context(ctx))
            done = refused
        ctx.stash[_STASH] = done
    return done if isinstance(done, ProxyPass) else None


def answer(ctx):
    """nginx's page for a URL that could not be proxied (``current`` returned None)."""
    ctx.vars.setdefault("upstream_status", "")
    return error_page(ctx.stash[_STASH].status)
