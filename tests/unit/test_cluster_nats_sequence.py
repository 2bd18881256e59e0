"""The NATS engine reads a message's stream sequence from its reply subject itself (nats-py's
``msg.metadata`` costs several objects per message): the same number nats-py finds, in both
reply formats; anything else is left to nats-py."""

from __future__ import annotations

import pytest

pytest.importorskip("nats")

from nats.aio.msg import Msg  # noqa: E402

from ngxsim_plugins.cluster.engines.nats import stream_sequence  # noqa: E402


@pytest.mark.parametrize("reply", [
    "$JS.ACK.ngxsim_bus.OrdCon123.1.4711.3.1796619036158000000.0",  # v1: no domain
    "$JS.ACK.hub.ACCHASH.ngxsim_bus.OrdCon123.1.4711.3.1796619036158000000.0.rnd",  # v2
    "$JS.ACK._.ACCHASH.ngxsim_bus.OrdCon123.2.90071992547409.3.1796619036158000000.12",  # v2 without its last token
])
def test_the_stream_sequence_is_the_one_nats_py_reads(reply):
    msg = Msg(_client=None, subject="ngxsim.bus", reply=reply, data=b"")
    assert stream_sequence(msg) == msg.metadata.sequence.stream


def test_a_reply_of_another_shape_is_left_to_nats_py():
    from nats.errors import Error

    with pytest.raises(Error):  # nats-py's own refusal: not a JetStream message
        stream_sequence(Msg(_client=None, subject="ngxsim.bus", reply="_INBOX.abc.1", data=b""))


@pytest.mark.parametrize("reply", [
    "$JS.ACK.ngxsim_bus.OrdCon123.1.4711.3.1796619036158123456.0",
    "$JS.ACK.hub.ACCHASH.ngxsim_bus.OrdCon123.1.4711.3.1796619036158123456.0.rnd",
    "$JS.ACK._.ACCHASH.ngxsim_bus.OrdCon123.2.90071992547409.3.1796619036158123456.12",
])
def test_the_stored_time_is_the_one_nats_py_reads_in_microseconds(reply):
    """(What a reader's cursor carries, SEQ@MICROS, to find out later whether the stream still
    holds that entry: compared with the time ``get_msg`` gives, which nats-py keeps to the µs.)"""
    from ngxsim_plugins.cluster.engines.nats import _micros, stream_time_us

    msg = Msg(_client=None, subject="ngxsim.bus", reply=reply, data=b"")
    assert stream_time_us(msg) == _micros(msg.metadata.timestamp) == 1796619036158123
