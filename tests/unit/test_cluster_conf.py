"""``cluster_bridge``: every bad parameter fails the load (``ngxsim -t`` included) naming file
and line, without connecting to anything; what a good one declares."""

from __future__ import annotations

import socket

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration

CONF = """load_module worker_events;
load_module cluster;
http {
    worker_events_zone bus;
    %s
    server {
        listen 127.0.0.1:8081;
        location /ev { worker_events_api; worker_events_channel c; }
        location /other { worker_events_api; worker_events_zone other; worker_events_channel c; }
    }
}
"""


@pytest.fixture
def state(tmp_path):
    return str(tmp_path)


def load(line: str):
    return load_configuration("/p/c.conf", text=CONF % line)


def error(line: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(line)
    return str(err.value)


def test_a_good_bridge_declares_its_relay_service_and_view_zone_and_derives_the_instance(state):
    config = load(f"cluster_bridge bus redis://127.0.0.1:6379/0 channels=c,cache.invalidate state={state};")
    plan = config.stash["cluster"]["bus"]
    bridge = plan["bridge"]
    assert bridge.channels == ("c", "cache.invalidate") and bridge.stream == "ngxsim.bus"
    assert bridge.retention == 100_000 and bridge.password_file is None
    assert plan["instance"] == f"{socket.gethostname().split('.')[0]}-127.0.0.1:8081"
    assert [s.name for s in config.jobs._specs.values()] == ["cluster.relay.bus"]
    assert next(iter(config.jobs._specs.values())).service
    assert "cluster.bus" in {z.name for z in config.zones}
    assert bridge.bridges("c") and not bridge.bridges("other") and not bridge.bridges("@gap")


def test_every_option_and_a_password_file(state, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = load(f"cluster_bridge other rediss://user@h1:6380/2 channels=* state={state} stream=prod:bus "
                  f"instance=web-1 retention=5000 password_file={secret} timeout=500ms relay_nice=19;")
    bridge = config.stash["cluster"]["other"]["bridge"]
    assert (bridge.channels, bridge.stream, bridge.instance, bridge.retention, bridge.timeout, bridge.relay_nice) == (
        None, "prod:bus", "web-1", 5000, 0.5, 19)
    [relay] = [spec for spec in config.jobs if spec.name == "cluster.relay.other"]
    assert relay.process and relay.nice == 19  # the relay's own process, that far below the workers'

    assert bridge.password() == "s3cret" and bridge.bridges("anything") and bridge.engine == "rediss://***@h1:6380/2"


@pytest.mark.parametrize("line, message", [
    ("cluster_bridge bus http://h:1 channels=c state={s};", 'unknown engine scheme "http://" (known: redis://, rediss://, nats://, tls://)'),
    ("cluster_bridge bus h:6379 channels=c state={s};", "no scheme in the engine URL"),
    ("cluster_bridge bus redis://h:99999 channels=c state={s};", "invalid engine URL"),
    ("cluster_bridge bus redis://h:port channels=c state={s};", "invalid port"),
    ("cluster_bridge bus redis://:6379 channels=c state={s};", "no host"),
    ("cluster_bridge bus redis://h/x channels=c state={s};", 'invalid database "x"'),
    ("cluster_bridge bus redis://u:secret@h channels=c state={s};", 'a password in the engine URL "redis://***@h"'),
    ("cluster_bridge bus redis://h channels=c state={s} password_file=/nonexistent/pw;", 'cannot read password file "/nonexistent/pw"'),
    ("cluster_bridge bus redis://h state={s};", '"channels=" is required'),
    ("cluster_bridge bus redis://h channels=c;", '"state=" is required'),
    ("cluster_bridge bus redis://h channels=c state=/nonexistent/dir;", 'state folder "/nonexistent/dir" does not exist'),
    ("cluster_bridge bus redis://h channels=c,@gap state={s};", 'invalid channel "@gap"'),
    ("cluster_bridge bus redis://h channels=c,, state={s};", 'invalid channel ""'),
    ("cluster_bridge bus redis://h channels=c state={s} instance=a/b;", 'invalid instance "a/b"'),
    ("cluster_bridge bus redis://h channels=c state={s} stream=a\\ b;", "invalid stream"),
    ("cluster_bridge bus redis://h channels=c state={s} retention=5;", 'invalid "retention=5"'),
    ("cluster_bridge bus redis://h channels=c state={s} timeout=never;", 'invalid "timeout=never"'),
    ("cluster_bridge bus redis://h channels=c state={s} relay_nice=20;", 'invalid "relay_nice=20": from 0 to 19'),
    ("cluster_bridge bus redis://h channels=c state={s} relay_nice=-1;", 'invalid "relay_nice=-1"'),
    ("cluster_bridge bus redis://h channels=c state={s} color=red;", 'invalid parameter "color=red"'),
    ("cluster_bridge bus redis://h channels=c state={s} stream=a stream=b;", 'duplicate parameter "stream="'),
    ("cluster_bridge nope redis://h channels=c state={s};", 'unknown event zone "nope" in "cluster_bridge" directive'),
    ("cluster_bridge bus;", 'invalid number of arguments in "cluster_bridge" directive'),
])
def test_bad_bridges_fail_naming_file_and_line_and_never_show_a_password(state, line, message):
    text = error(line.replace("{s}", state))
    assert message in text and text.endswith(" in /p/c.conf:5"), text
    assert "secret" not in text


@pytest.mark.parametrize("url", ["nats://n1:4222,nats://n2:4222?replicas=3", "tls://n1:4222,n2:4222"])
def test_nats_urls_plain_and_tls_are_served_by_the_nats_engine(state, url):
    pytest.importorskip("nats", reason="nats-py is not installed: pip install 'ngxsim[cluster]'")
    from ngxsim_plugins.cluster.engines import engine_class
    from ngxsim_plugins.cluster.engines.nats import NatsEngine

    bridge = load(f"cluster_bridge bus {url} channels=c state={state};").stash["cluster"]["bus"]["bridge"]
    assert bridge.url == url and engine_class(url) is NatsEngine


def test_a_second_bridge_of_one_zone_fails_at_its_own_line(state):
    line = f"cluster_bridge bus redis://h channels=c state={state};"
    text = error(line + "\n    " + line)
    assert 'zone "bus" is bridged twice' in text and text.endswith(" in /p/c.conf:6"), text


def test_without_worker_events_the_fix_is_named(state):
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/c.conf", text=f"load_module cluster;\nhttp {{\n cluster_bridge bus redis://h channels=c state={state};\n}}\n")
    assert 'add "load_module worker_events;"' in str(err.value) and str(err.value).endswith("/p/c.conf:3")


def test_ngxsim_t_reports_a_bad_bridge_with_file_and_line_and_connects_to_nothing(state, tmp_path):
    import subprocess
    import sys

    conf = tmp_path / "bad.conf"
    conf.write_text(CONF % f"cluster_bridge bus redis://127.0.0.1:70000/0 channels=c state={state};")
    bad = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(conf)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and f'invalid engine URL "redis://127.0.0.1:70000/0"' in bad.stderr
    assert f"in {conf}:5" in bad.stderr
    # nothing listens on port 1: -t does not connect, so this passes
    conf.write_text(CONF % f"cluster_bridge bus redis://127.0.0.1:1/0 channels=c state={state};")
    good = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(conf)], capture_output=True, text=True,
                          timeout=60)
    assert good.returncode == 0, good.stderr


def test_the_default_instance_id_names_every_address_as_0_0_0_0(state):
    text = (CONF % f"cluster_bridge bus redis://h channels=c state={state};").replace("listen 127.0.0.1:8081;",
                                                                                       "listen 8082;")
    config = load_configuration("/p/c.conf", text=text)
    assert config.stash["cluster"]["bus"]["instance"] == f"{socket.gethostname().split('.')[0]}-0.0.0.0:8082"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from ngxsim.testing.engines import TlsFiles

    folder = tmp_path_factory.mktemp("pki")
    (folder / "junk.pem").write_text("not a certificate\n")
    return TlsFiles(folder), str(folder / "junk.pem")


@pytest.mark.parametrize("url", ["rediss://h:6380/0", "tls://n1:4222"])
def test_tls_files_of_a_tls_engine_url(state, pki, url):
    files, _ = pki
    config = load(f"cluster_bridge bus {url} channels=c state={state} tls_ca={files.ca} "
                  f"tls_cert={files.client_cert} tls_key={files.client_key};")
    bridge = config.stash["cluster"]["bus"]["bridge"]
    assert (bridge.tls.ca, bridge.tls.cert, bridge.tls.key) == (files.ca, files.client_cert, files.client_key)
    engine = bridge.make_engine()
    assert engine.tls == bridge.tls
    bridge = load(f"cluster_bridge bus {url} channels=c state={state};").stash["cluster"]["bus"]["bridge"]
    assert bridge.tls is None and bridge.make_engine().tls.ca is None  # a TLS URL alone: the system's CAs


@pytest.mark.parametrize("args, message", [
    ("redis://h tls_ca={ca}", '"tls_ca=" with "redis://h": the engine URL of a TLS connection is rediss://'),
    ("nats://h:4222 tls_ca={ca}", '"tls_ca=" with "nats://h:4222": the engine URL of a TLS connection is tls://'),
    ("rediss://h tls_ca=/nonexistent/ca.pem", 'cannot read "tls_ca=/nonexistent/ca.pem" (2: No such file or directory)'),
    ("rediss://h tls_ca=", 'empty "tls_ca="'),
    ("rediss://h tls_ca={junk}", '"tls_ca={junk}" holds no usable certificate'),
    ("rediss://h tls_cert={cert}", '"tls_cert=" and "tls_key=" go together'),
    ("tls://h:4222 tls_key={key}", '"tls_cert=" and "tls_key=" go together'),
    ("rediss://h tls_cert={cert} tls_key={junk}", 'are not a certificate and its key'),
    ("rediss://h tls_cert={cert} tls_key={other_key}", 'are not a certificate and its key'),
])
def test_bad_tls_files_fail_naming_file_and_line(state, pki, args, message):
    files, junk = pki
    values = {"ca": files.ca, "junk": junk, "cert": files.client_cert, "key": files.client_key, "other_key": files.key}
    text = error(f"cluster_bridge bus {args.format(**values)} channels=c state={state};")
    assert message.format(**values) in text and text.endswith(" in /p/c.conf:5"), text
