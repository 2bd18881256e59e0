"""Directives of real nginx that ngxsim does not implement fail with one uniform message saying
what to do instead (``ngxsim.Unsupported``), never a bare "unknown directive"; and the list of
the proxy, upstream and proxy-cache modules covers every command of nginx's own tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ngxsim import ConfigError, Unsupported
from ngxsim.core.conf.loader import load_configuration
from ngxsim_plugins.upstreams.unsupported import ADVICE, CORE_ADVICE

COMMANDS = Path(__file__).resolve().parents[1] / "data" / "nginx-1.22.1-proxy-upstream-commands.txt"


def error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/u.conf", text=text)
    return str(err.value)


MODULE = "load_module ngxsim_test_unsupported;\n"


def test_a_declared_unsupported_directive_says_what_to_do_with_file_and_line():
    assert error(MODULE + "http {\n  frob_anywhere 1 2;\n}\n") == \
        '"frob_anywhere" directive is not supported by ngxsim: use frob_other instead in /p/u.conf:3'


def test_outside_its_contexts_the_name_stays_unknown():
    text = "http {\n  server {\n    location / {\n      frob_in_location;\n    }\n  }\n}\n"
    assert error(MODULE + text) == '"frob_in_location" directive is not supported by ngxsim: move it in /p/u.conf:5'
    assert error(MODULE + "http {\n  frob_in_location;\n}\n") == 'unknown directive "frob_in_location" in /p/u.conf:3'


def test_a_module_that_implements_the_name_wins_in_any_order():
    config = load_configuration("/p/u.conf", text=MODULE + "http {\n  server {\n    listen 127.0.0.1:1;\n"
                                "    location / { frob_both x; }\n  }\n}\n")
    assert [loc.get("frob_both") for loc in config.blocks("location")] == ["x"]
    # elsewhere it is a directive in the wrong place, not an unsupported one
    assert error(MODULE + "http {\n  frob_both x;\n}\n") == '"frob_both" directive is not allowed here in /p/u.conf:3'


def test_a_name_real_in_one_context_can_have_advice_in_another():
    assert error(MODULE + "http {\n  frob_split 1;\n}\n") == \
        '"frob_split" directive is not supported by ngxsim: the http-level one is not here in /p/u.conf:3'
    assert error(MODULE + "http {\n  server {\n    frob_split 1;\n  }\n}\n") == \
        '"frob_split" directive is not allowed here in /p/u.conf:4'
    config = load_configuration("/p/u.conf", text=MODULE + "http {\n  server {\n    listen 127.0.0.1:1;\n"
                                "    location / { frob_split y; }\n  }\n}\n")
    assert [loc.get("frob_split") for loc in config.blocks("location")] == ["y"]


def test_an_unsupported_declaration_needs_advice():
    with pytest.raises(ValueError, match="needs advice"):
        Unsupported("x", " ")


def nginx_commands() -> list[tuple[str, str]]:
    lines = [line.split() for line in COMMANDS.read_text().splitlines() if line and not line.startswith("#")]
    return [(source, name) for source, name in lines]


def test_every_command_of_nginx_proxy_upstream_and_cache_is_implemented_or_says_what_to_do():
    """nginx 1.22.1's tables (tests/data/...): each name is a Directive of upstreams or
    cache_purge, or an Unsupported entry with advice; none is a bare "unknown directive"."""
    config = load_configuration("/p/u.conf", text="load_module worker_events;\nload_module upstreams;\n"
                                "load_module cache_purge;\nhttp { worker_events_zone bus; }\n")
    table = config.table
    commands = nginx_commands()
    assert len(commands) == 79 and ("ngx_http_proxy_module.c", "proxy_pass") in commands
    uncovered = [name for _, name in commands if table.get(name) is None and name not in table.unsupported]
    assert not uncovered, f"nginx directives neither implemented nor declared unsupported: {uncovered}"
    # advice for a name a module implements is dead text: drop it when the directive arrives
    shadowed = [name for name in ADVICE if table.get(name) is not None]
    assert not shadowed, f"implemented, yet still listed as unsupported: {shadowed}"
    assert set(ADVICE) <= {name for _, name in commands}


CHECKED = "load_module worker_events;\nload_module upstreams;\nload_module cache_purge;\n"


@pytest.mark.parametrize("kind, body, line, name", [
    ("proxy", "  server {\n    location / {\n      proxy_buffering off;\n    }\n  }\n", 8, "proxy_buffering"),
    ("proxy-ssl", "  server {\n    proxy_ssl_verify on;\n  }\n", 7, "proxy_ssl_verify"),
    ("proxy-cache", "  proxy_cache_max_range_offset 10;\n", 6, "proxy_cache_max_range_offset"),
    ("resolver", "  server {\n    location / {\n      resolver 127.0.0.53;\n      proxy_pass http://$host;\n"
                 "    }\n  }\n", 8, "resolver"),
    ("upstream", "  upstream b {\n    server 127.0.0.1:1;\n    least_conn;\n  }\n", 8, "least_conn"),
    ("upstream-random", "  upstream b {\n    server 127.0.0.1:1;\n    random two;\n  }\n", 8, "random"),
])
def test_ngxsim_t_names_the_directive_its_advice_file_and_line(tmp_path, kind, body, line, name):
    conf = tmp_path / f"{kind}.conf"
    conf.write_text(CHECKED + "http {\n  worker_events_zone bus;\n" + body + "}\n")
    run = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(conf)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    advice = {**ADVICE, **CORE_ADVICE}[name]
    assert f'[emerg] "{name}" directive is not supported by ngxsim: {advice} in {conf}:{line}' in run.stderr
