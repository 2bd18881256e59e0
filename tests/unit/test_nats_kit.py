"""The NATS test kit's ports: a node's client, monitoring and cluster ports are distinct even
when the kernel hands a just-released port out again."""

from __future__ import annotations

from ngxsim.testing import nats_server


def test_a_port_the_kernel_gives_twice_is_not_taken_twice(monkeypatch, tmp_path):
    given = iter([41001, 41001, 41002, 41002, 41001, 41003])
    monkeypatch.setattr(nats_server, "free_port", lambda: next(given))
    monkeypatch.setattr(nats_server, "_handed", set())
    node = nats_server.NatsServer("n1", tmp_path)
    assert (node.port, node.monitor_port) == (41001, 41002)
    assert nats_server._port() == 41003
