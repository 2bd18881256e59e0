"""worker_events' directives: every config error names the problem, the file and the line."""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.shm import HEADER_SIZE
from ngxsim_plugins.worker_events.ring import ring_bytes


def load(location: str, http: str = ""):
    return load_configuration("/p/w.conf", text=(
        "load_module worker_events;\n"
        "http {\n"
        f"    {http}\n"
        "    server {\n"
        "        location /ev {\n"
        f"            {location}\n"
        "        }\n"
        "    }\n"
        "}\n"))


def error(location: str, http: str = "") -> str:
    with pytest.raises(ConfigError) as err:
        load(location, http)
    return str(err.value)


def test_the_seed_config_loads_and_sizes_its_zone():
    config = load("worker_events_api; worker_events_zone bus; worker_events_channel cache.invalidate; "
                  "worker_events_ring_size 1024; worker_events_publish_key changeme;")
    spec = config.zones["bus"]
    assert spec.size == HEADER_SIZE + ring_bytes(1024) and spec.owner == "worker_events"
    assert "key" in config.secret_args


@pytest.mark.parametrize("location, message", [
    ("worker_events_api; worker_events_channel c;", '"worker_events_api" requires "worker_events_zone" in /p/w.conf:6'),
    ("worker_events_api; worker_events_zone z;", '"worker_events_api" requires "worker_events_channel" in /p/w.conf:6'),
    ("worker_events_zone z; worker_events_ring_size 0;", '"worker_events_ring_size" must be a number of entries from 1 to 262144, not "0" in /p/w.conf:6'),
    ("worker_events_zone z; worker_events_ring_size ten;", 'not "ten" in /p/w.conf:6'),
    ("worker_events_zone z; worker_events_ring_size 99999999;", 'not "99999999" in /p/w.conf:6'),
    ("worker_events_zone z; worker_events_page_size 0;", '"worker_events_page_size" must be a number of events from 1 to 10000, not "0" in /p/w.conf:6'),
    ("worker_events_zone z; worker_events_page_size 10001;", 'not "10001" in /p/w.conf:6'),
    ("worker_events_zone z 1k;", f'zone "z" is too small for a ring of 1024 entries: {HEADER_SIZE + ring_bytes(1024)} bytes needed, 1024 given in /p/w.conf:6'),
    ("worker_events_zone z 1q;", 'invalid zone size "1q" in "worker_events_zone" directive in /p/w.conf:6'),
    ("worker_events_zone bad/name;", 'invalid zone name "bad/name"'),
    ("worker_events_api; worker_events_zone z; worker_events_channel " + "c" * 65 + ";", "1 to 64 bytes"),
    ("worker_events_api; worker_events_zone z; worker_events_channel c; worker_events_publish_key '';", "must not be empty"),
    # it takes no argument: "on" is not a synonym (nginx: NGX_CONF_NOARGS)
    ("worker_events_api on; worker_events_zone z; worker_events_channel c;",
     'invalid number of arguments in "worker_events_api" directive in /p/w.conf:6'),
])
def test_config_errors(location, message):
    if not message:
        load(location)
        return
    assert message in error(location)


def test_locations_sharing_a_zone_must_agree_on_the_ring_size():
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/w.conf", text=(
            "load_module worker_events;\n"
            "http {\n"
            "  server {\n"
            "    location /a { worker_events_zone z; worker_events_ring_size 16; }\n"
            "    location /b { worker_events_zone z; worker_events_ring_size 32; }\n"
            "  }\n"
            "}\n"))
    assert str(err.value) == 'zone "z" is used with ring size 32 here and with 16 at /p/w.conf:4 in /p/w.conf:5'


def test_a_zone_declared_at_http_level_without_an_api_and_inherited():
    config = load("worker_events_api; worker_events_channel c;", http="worker_events_zone shared; worker_events_ring_size 8;")
    assert config.zones["shared"].size == HEADER_SIZE + ring_bytes(8)
    assert config.stash["worker_events"] == {"shared": 8}


def test_an_explicit_size_larger_than_needed_is_kept():
    assert load("worker_events_zone z 4m;").zones["z"].size == 4 * 1024 * 1024


@pytest.mark.parametrize("http, threads, allowed", [
    ("", 4, 3),  # auto: all threads but one
    ("", 2, 1),
    ("", 1, 1),  # a sync worker: its one request
    ("worker_events_long_poll_limit 0;", 4, 0),
    ("worker_events_long_poll_limit 7;", 4, 7),
])
def test_long_poll_limit(http, threads, allowed):
    from ngxsim_plugins.worker_events.api import WorkerEventsApi

    config = load("worker_events_api; worker_events_zone bus; worker_events_channel c;", http)
    api = WorkerEventsApi(config.blocks("location")[0], config)
    assert api.long_poll_limit(threads) == allowed


def test_long_poll_limit_errors():
    assert 'must be "auto" or a number from 0 to 1024, not "many" in /p/w.conf:3' in error(
        "worker_events_api; worker_events_zone bus; worker_events_channel c;", "worker_events_long_poll_limit many;")
