"""The bridge over TLS: ``rediss://`` to a ``redis-server`` and ``tls://`` to a ``nats-server``
serving TLS only, with certificates of a private CA (``trustme``). The engine's certificate is
verified against ``tls_ca=`` (a CA that did not sign it is refused, and the error log says so
while the server serves on), and an engine that asks for a client certificate gets the
instance's (``tls_cert=``/``tls_key=``)."""

from __future__ import annotations

import uuid

import pytest

from ngxsim.testing import wait_for
from ngxsim.testing.engines import RedisServer, TlsFiles
from test_cluster import API, CONF, placeholders, publish, remote_events, wait_all_workers


def _redis(folder, tls):
    from pytest_ngxsim import _need_redis

    _need_redis()
    return RedisServer(folder, tls=tls).start()


def _nats(folder, tls):
    from ngxsim.testing.nats_server import NatsServer, nats_server_missing

    why = nats_server_missing()
    if why:
        pytest.skip(why)
    return NatsServer("tls", folder, tls=tls).start()


START = {"redis": _redis, "nats": _nats}


@pytest.fixture(scope="module", params=sorted(START))
def tls_engines(request, tmp_path_factory):
    """Per engine: ``(files, engine, mutual)``: one server verifying nobody's certificate and one
    that asks every client for one signed by the CA, both for the whole module."""
    folder = tmp_path_factory.mktemp(f"tls-{request.param}")
    files = TlsFiles(folder / "pki", verify_clients=False)
    mutual_files = TlsFiles(folder / "pki-mutual", verify_clients=True)
    started = []
    try:
        started.append(START[request.param](folder / "plain", files))
        started.append(START[request.param](folder / "mutual", mutual_files))
        yield files, started[0], mutual_files, started[1]
    finally:
        for server in started:
            server.stop()


def _start(ngxsim_cluster, url, extra, names=("A", "B"), workers=2):
    cluster = ngxsim_cluster(url)
    stream = f"tls.{uuid.uuid4().hex[:12]}"
    return [cluster.start_one(CONF, name, workers, stream, placeholders=placeholders(extra=extra)) for name in names]


def test_events_cross_a_tls_engine_verified_against_the_configured_ca(ngxsim_cluster, tls_engines):
    files, engine, _, _ = tls_engines
    assert engine.url.startswith(("rediss://", "tls://"))
    a, b = _start(ngxsim_cluster, engine.url, f"tls_ca={files.ca}")
    for member in (a, b):
        assert member.wait_connected(API)["connected"] is True
    publish(a, 3, prefix="tls")
    wanted = [("c", f"tls{i}") for i in range(3)]
    wait_all_workers(b, lambda lines: [(ch, p) for ch, p, _, _ in remote_events(lines, "A")] == wanted,
                     "A's three events over TLS")


def test_an_engine_certificate_of_another_ca_is_refused_and_said_while_the_server_serves(ngxsim_cluster,
                                                                                          tls_engines):
    files, engine, _, _ = tls_engines
    (a,) = _start(ngxsim_cluster, engine.url, f"tls_ca={files.other_ca}", names=("A",), workers=1)
    view = wait_for(lambda: (v := a.cluster_view(API)).get("last_error") and v, 20,
                    what="the relay's failed TLS connect in the cluster view")
    assert view["connected"] is False
    assert "certificate verify failed" in view["last_error"], view["last_error"]
    wait_for(lambda: "certificate verify failed" in a.server.output(), 10,
             what="the failed TLS connect in the error log")
    # no request waits on the engine: the server answers, publishing included
    assert a.server.get("/dump").status_code == 200
    assert a.server.post(API, json={"type": "t", "payload": "x"}).status_code == 201
    assert a.cluster_view(API)["connected"] is False


def test_an_engine_certificate_for_another_name_is_refused(ngxsim_cluster, tls_engines):
    files, engine, _, _ = tls_engines
    # the certificate names 127.0.0.1 only; the CA is the right one
    url = engine.url.replace("127.0.0.1", "localhost")
    (a,) = _start(ngxsim_cluster, url, f"tls_ca={files.ca}", names=("A",), workers=1)
    view = wait_for(lambda: (v := a.cluster_view(API)).get("last_error") and v, 20,
                    what="the relay's failed TLS connect in the cluster view")
    assert view["connected"] is False
    assert "certificate verify failed" in view["last_error"], view["last_error"]
    assert "mismatch" in view["last_error"].lower(), view["last_error"]


def test_an_engine_that_asks_for_a_client_certificate_gets_the_instances(ngxsim_cluster, tls_engines):
    _, _, files, engine = tls_engines
    both = f"tls_ca={files.ca} tls_cert={files.client_cert} tls_key={files.client_key}"
    a, b = _start(ngxsim_cluster, engine.url, both)
    (lone,) = _start(ngxsim_cluster, engine.url, f"tls_ca={files.ca}", names=("C",), workers=1)
    for member in (a, b):
        assert member.wait_connected(API)["connected"] is True
    publish(a, 2, prefix="m")
    wait_all_workers(b, lambda lines: [p for _, p, _, _ in remote_events(lines, "A")] == ["m0", "m1"],
                     "A's events over mutual TLS")
    view = wait_for(lambda: (v := lone.cluster_view(API)).get("last_error") and v, 20,
                    what="the refused connect of an instance without a client certificate")
    assert view["connected"] is False
    # the TLS alert alone (SSLV3_ALERT_BAD_CERTIFICATE, TLSV13_ALERT_CERTIFICATE_REQUIRED) says
    # neither what is missing nor where to give it
    assert "client certificate: give tls_cert= and tls_key=" in view["last_error"], view
