"""The directives of nginx's proxy, upstream and proxy-cache modules that ngxsim does not
implement, each with what to do instead.

A config using one fails ``ngxsim -t`` with ``"NAME" directive is not supported by ngxsim:
ADVICE in FILE:LINE`` (``ngxsim.Unsupported``) instead of ``unknown directive``. A module that
implements one of them (this one or cache_purge) declares a ``Directive`` of that name, which
always wins over the entry here. ``tests/unit/test_unsupported_directives.py`` checks that every
command of nginx 1.22.1's tables (``tests/data/nginx-1.22.1-proxy-upstream-commands.txt``) is
either implemented or listed here.
"""

from __future__ import annotations

from ngxsim import Unsupported

_TLS = ("ngxsim proxies to http:// peers only; terminate TLS in front of the peer or proxy to its plain-HTTP port, "
        "and remove it")
_BUFFERS = ("ngxsim reads the request body into memory and streams the answer with buffers of its own; "
            "remove it (docs/upstreams.md says how the proxy buffers)")
_COOKIES = "ngxsim passes Set-Cookie as the origin sends it; have the origin set it as you want, and remove it"
_CONNECT = "ngxsim opens its connections to the peers itself (a per-worker pool); remove it"
_BALANCE = ("ngxsim balances by weighted round robin only (with backup peers); remove it, "
            "and use weight= on the server lines to shape the load")
_SENT_AS_IS = ("ngxsim sends the client's method, header and body as they came (change header fields with "
               "proxy_set_header); remove it")
_CACHE_ALWAYS = "ngxsim's cache (module cache_purge) "
ADVICE: dict[str, str] = {
    # ngx_http_proxy_module.c: what the request to the peer carries
    "proxy_method": _SENT_AS_IS,
    "proxy_set_body": _SENT_AS_IS,
    "proxy_pass_request_headers": _SENT_AS_IS,
    "proxy_pass_request_body": _SENT_AS_IS,
    "proxy_headers_hash_max_size": "ngxsim keeps proxy_set_header fields in a dict that needs no sizing; remove it",
    "proxy_headers_hash_bucket_size": "ngxsim keeps proxy_set_header fields in a dict that needs no sizing; remove it",
    # what the client gets back
    "proxy_intercept_errors": "ngxsim relays the peer's error answers as they are (it has no error_page); remove it",
    "proxy_force_ranges": "ngxsim relays the peer's answer without serving byte ranges itself; remove it",
    "proxy_limit_rate": "ngxsim reads the peer's answer as fast as the client takes it; remove it",
    "proxy_cookie_domain": _COOKIES,
    "proxy_cookie_path": _COOKIES,
    "proxy_cookie_flags": _COOKIES,
    # buffering, temporary files, sockets
    "proxy_buffering": _BUFFERS,
    "proxy_request_buffering": _BUFFERS,
    "proxy_buffer_size": _BUFFERS,
    "proxy_buffers": _BUFFERS,
    "proxy_busy_buffers_size": _BUFFERS,
    "proxy_temp_path": "ngxsim writes no temporary files for proxied answers; remove it",
    "proxy_max_temp_file_size": "ngxsim writes no temporary files for proxied answers; remove it",
    "proxy_temp_file_write_size": "ngxsim writes no temporary files for proxied answers; remove it",
    "proxy_store": "ngxsim does not mirror answers into files; use proxy_cache (module cache_purge), and remove it",
    "proxy_store_access": "ngxsim does not mirror answers into files; use proxy_cache (module cache_purge), and remove it",
    "proxy_ignore_client_abort": "ngxsim stops reading the peer's answer when the client goes away; remove it",
    "proxy_bind": _CONNECT,
    "proxy_socket_keepalive": _CONNECT,
    "proxy_send_lowat": _CONNECT,
    "proxy_send_timeout": ("ngxsim has no separate send timeout: proxy_connect_timeout and proxy_read_timeout bound "
                           "the waits on a peer; remove it"),
    "proxy_next_upstream_tries": ("ngxsim tries each peer of the upstream at most once per request (nginx's default, "
                                  "0: no limit); remove it"),
    "proxy_next_upstream_timeout": ("ngxsim bounds the tries of one request by the peers' own timeouts (nginx's "
                                    "default, 0: no limit); remove it"),
    # TLS to the peers
    **{name: _TLS for name in (
        "proxy_ssl_session_reuse", "proxy_ssl_protocols", "proxy_ssl_ciphers", "proxy_ssl_name",
        "proxy_ssl_server_name", "proxy_ssl_verify", "proxy_ssl_verify_depth", "proxy_ssl_trusted_certificate",
        "proxy_ssl_crl", "proxy_ssl_certificate", "proxy_ssl_certificate_key", "proxy_ssl_password_file",
        "proxy_ssl_conf_command")},
    # the proxy cache (what cache_purge does not implement)
    "proxy_cache_max_range_offset": _CACHE_ALWAYS + "does not serve byte ranges; remove it",
    "hash": _BALANCE,
    "ip_hash": _BALANCE,
    "least_conn": _BALANCE,
    "random": _BALANCE,
}


# the http core's directives a proxy_pass with variables needs in nginx for a name that is no
# upstream group nor address (ngx_http_core_module.c): not in the proxy and upstream modules'
# tables above, declared here because only the proxy makes them matter
_RESOLVER = ("ngxsim resolves no names: in proxy_pass (with variables too) name an upstream group or an IP "
             "address (a name that is neither gets nginx's 502 without a resolver); remove it")
CORE_ADVICE: dict[str, str] = {"resolver": _RESOLVER, "resolver_timeout": _RESOLVER}


# nginx allows these only inside an upstream block
IN_UPSTREAM = frozenset(("hash", "ip_hash", "least_conn", "random"))


def declarations(upstream_context: str) -> list[Unsupported]:
    """One ``Unsupported`` per entry of ``ADVICE``, for ``ngxsim_directives``."""
    return [Unsupported(name, advice, (upstream_context,) if name in IN_UPSTREAM else ())
            for name, advice in {**ADVICE, **CORE_ADVICE}.items()]
