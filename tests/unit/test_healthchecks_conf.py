"""``health_check``'s configuration: every bad parameter fails the load naming file and line;
what a good one declares (the zone, one periodic job per checked upstream)."""

from __future__ import annotations

import pytest

from ngxsim import ZONE_HEADER_SIZE, ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim_plugins.healthchecks.checker import ZONE
from ngxsim_plugins.healthchecks.conf import HealthCheck
from ngxsim_plugins.healthchecks.store import zone_size

CONF = """load_module worker_events;
load_module upstreams;
load_module healthchecks;
http {
    worker_events_zone bus;
    match ok { status 200; }
    upstream backend { zone backend 64k; server 127.0.0.1:9001; server 127.0.0.1:9002; }
    upstream other { zone other 64k; server 127.0.0.1:9003; }
    server {
        location / {
            proxy_pass http://backend;
            %s
        }
        location /other { proxy_pass http://other; %s }
        location /direct { proxy_pass http://127.0.0.1:9009; %s }
        location /status { health_check_status; }
    }
}
"""


def load(check: str = "health_check;", other: str = "", direct: str = "", text: str | None = None):
    return load_configuration("/p/h.conf", text=text if text is not None else CONF % (check, other, direct))


def error(*args, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        load(*args, **kw)
    return str(err.value)


def test_the_issue_example_loads_and_declares_a_zone_and_a_job():
    config = load("health_check interval=1s fails=2 passes=2 uri=/health timeout=500ms match=ok;")
    plan = config.stash["healthchecks"]
    assert list(plan.checks) == ["backend"]
    uc = plan.checks["backend"]
    assert uc.check == HealthCheck(1.0, 2, 2, "/health", None, 0.5, "ok", False)
    assert uc.match.name == "ok" and uc.event_zone == "bus"
    assert config.zones[ZONE].owner == "healthchecks"
    assert config.zones[ZONE].size == ZONE_HEADER_SIZE + zone_size(1)  # the store fits after the core's header
    jobs = {job.name: job for job in config.jobs}
    assert jobs["healthchecks.backend"].interval == 1.0
    # a round may last a timeout: the lease outlives it
    assert jobs["healthchecks.backend"].lease == 2.5


def test_defaults_are_nginx_plus_ones():
    check = load().stash["healthchecks"].checks["backend"].check
    assert (check.interval, check.fails, check.passes, check.uri, check.port, check.match, check.mandatory) == (
        5.0, 1, 1, "/", None, None, False)


def test_several_upstreams_get_sections_and_jobs_of_their_own():
    config = load("health_check interval=2s;", other="health_check interval=300ms port=8081 mandatory;")
    assert list(config.stash["healthchecks"].checks) == ["backend", "other"]
    other = config.stash["healthchecks"].checks["other"].check
    assert other.port == 8081 and other.mandatory and other.interval == 0.3
    assert {job.name for job in config.jobs} >= {"healthchecks.backend", "healthchecks.other"}


def test_no_health_check_declares_nothing():
    config = load("")
    assert ZONE not in config.zones and config.stash["healthchecks"].checks == {}
    assert not [job for job in config.jobs if job.name.startswith("healthchecks.")]


@pytest.mark.parametrize("check, message", [
    ("health_check interval=;", 'invalid value "interval=" in "health_check" directive: a time from 10ms to 1d (500ms, 5s) is required'),
    ("health_check interval=abc;", 'invalid value "interval=abc"'),
    ("health_check interval=5ms;", 'invalid value "interval=5ms"'),
    ("health_check interval=2d;", 'invalid value "interval=2d"'),
    ("health_check fails=0;", 'invalid value "fails=0" in "health_check" directive: a number from 1 to 1000000 is required'),
    ("health_check fails=-1;", 'invalid value "fails=-1"'),
    ("health_check fails=two;", 'invalid value "fails=two"'),
    ("health_check passes=0;", 'invalid value "passes=0"'),
    ("health_check passes=1.5;", 'invalid value "passes=1.5"'),
    ("health_check uri=health;", 'invalid value "uri=health" in "health_check" directive: a URI starting with "/" without spaces or control characters is required'),
    ("health_check uri=;", 'invalid value "uri="'),
    ("health_check 'uri=/a b';", 'invalid value "uri=/a b"'),
    ("health_check port=0;", 'invalid value "port=0" in "health_check" directive: a number from 1 to 65535 is required'),
    ("health_check port=65536;", 'invalid value "port=65536"'),
    ("health_check port=http;", 'invalid value "port=http"'),
    ("health_check timeout=0;", 'invalid value "timeout=0" in "health_check" directive: a time from 1ms to 1h (500ms, 5s) is required'),
    ("health_check timeout=2h;", 'invalid value "timeout=2h"'),
    ("health_check match=;", 'invalid value "match=" in "health_check" directive: the name of a "match" block is required'),
    ("health_check mandatory=on;", 'invalid parameter "mandatory=on" in "health_check" directive'),
    ("health_check persistent;", 'invalid parameter "persistent" in "health_check" directive'),
    ("health_check jitter=1s;", 'invalid parameter "jitter=1s" in "health_check" directive'),
    ("health_check Interval=1s;", 'invalid parameter "Interval=1s" in "health_check" directive'),
    ("health_check fails=2 fails=3;", 'duplicate parameter "fails" in "health_check" directive'),
    ("health_check; health_check;", '"health_check" directive is duplicate'),
    ("health_check match=missing;", 'match "missing" not found'),
    # a flag declared without argument takes none (nginx's NGX_CONF_NOARGS)
    ("health_check_status maybe;", 'invalid number of arguments in "health_check_status" directive'),
])
def test_every_bad_parameter_names_file_and_line(check, message):
    got = error(check)
    assert got.startswith(message) and got.endswith(" in /p/h.conf:12"), got


def test_health_check_needs_a_location_that_proxies_to_a_group():
    assert error("", direct="health_check;") == (
        '"health_check" needs "proxy_pass http://NAME" to an upstream group in its location in /p/h.conf:15')
    text = (CONF % ("health_check;", "", "")).replace("location /status {", "location /status { health_check;")
    assert error(text=text) == (
        '"health_check" needs "proxy_pass http://NAME" to an upstream group in its location in /p/h.conf:16')


def test_health_check_stands_in_locations_only():
    text = (CONF % ("", "", "")).replace("    server {", "    health_check;\n    server {")
    assert error(text=text) == '"health_check" directive is not allowed here in /p/h.conf:9'


def test_one_health_check_per_upstream():
    text = (CONF % ("health_check;", "", "")).replace("location /other { proxy_pass http://other;",
                                                      "location /other { proxy_pass http://backend; health_check;")
    assert error(text=text) == 'upstream "backend" is already health-checked at /p/h.conf:12 in /p/h.conf:14'


def test_upstreams_must_be_loaded_first():
    text = (CONF % ("health_check;", "", "")).replace(
        "load_module upstreams;\nload_module healthchecks;", "load_module healthchecks;\nload_module upstreams;")
    assert error(text=text) == ('"health_check" needs the upstreams module: put "load_module upstreams;" before '
                                '"load_module healthchecks;" in /p/h.conf:12')


def test_events_need_the_http_level_bus():
    text = (CONF % ("health_check;", "", "")).replace("    worker_events_zone bus;\n", "")
    message = error(text=text)
    assert "worker_events_zone" in message and message.endswith("/p/h.conf:4")


def test_a_status_location_alone_needs_nothing_else():
    text = ("load_module worker_events;\nload_module healthchecks;\n"
            "http { server { location /status { health_check_status; } } }\n")
    config = load(text=text)
    assert config.stash["healthchecks"].checks == {}


def test_scope_cluster_needs_the_cluster_module_and_the_healthchecks_channel_bridged(tmp_path):
    assert error("health_check scope=everywhere;") == \
        'invalid value "scope=everywhere" in "health_check" directive: "instance" or "cluster" is required in /p/h.conf:12'
    assert error("health_check scope=cluster;") == \
        '"health_check" with "scope=cluster" needs the cluster module: add "load_module cluster;" in /p/h.conf:12'
    clustered = CONF.replace("load_module healthchecks;", "load_module healthchecks;\nload_module cluster;").replace(
        "worker_events_zone bus;", "worker_events_zone bus;\n    cluster_bridge bus redis://127.0.0.1:1 channels=%s "
        f"state={tmp_path};")
    with pytest.raises(ConfigError) as err:
        load(text=clustered % ("c", "health_check scope=cluster interval=3s;", "", ""))
    assert str(err.value) == ('"health_check" with "scope=cluster" needs the "healthchecks" channel of event zone "bus" '
                              'bridged: add "cluster_bridge bus URL channels=healthchecks ..." (or "healthchecks" to its '
                              '"channels=") in /p/h.conf:14')
    config = load(text=clustered % ("healthchecks", "health_check scope=cluster interval=3s;", "", ""))
    uc = config.stash["healthchecks"].checks["backend"]
    assert uc.check.scope == "cluster"
    # the job ticks three times an interval: the cluster-wide lease is renewed every third of its time
    assert {job.name: job for job in config.jobs}["healthchecks.backend"].interval == 1.0
    assert load("health_check;").stash["healthchecks"].checks["backend"].check.scope == "instance"
