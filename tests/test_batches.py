"""Batches (Connection.open_batch): a streaming sender's small messages queued with a list
append and framed together, in order, within credit; the C frame_run and its Python twin."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trpc import LocalProtocolError
from trpc import Status, _cext
from trpc.wire import _connection as _protocol
from trpc._events import CallEnded, SendCreditAvailable
from trpc.wire._connection import _frame_run_py

from .helpers import Pair, messages

FRAME_RUNS = {"python": _frame_run_py}
if _cext.speedups is not None:
    FRAME_RUNS["c"] = _cext.speedups.frame_run


@pytest.fixture(params=["c", "python"])
def frame_run(request, monkeypatch):
    """Each frame_run, also installed as the one the protocol uses."""
    if request.param not in FRAME_RUNS:
        if os.environ.get("TRPC_REQUIRE_C") == "1":
            pytest.fail(f"TRPC_REQUIRE_C=1 but trpc._speedups is unavailable: {_cext.speedups_error}")
        pytest.skip(f"trpc._speedups is unavailable: {_cext.speedups_error}")
    monkeypatch.setattr(_protocol, "_frame_run", FRAME_RUNS[request.param])
    return FRAME_RUNS[request.param]


def streaming_pair(framer_cls, **client_options):
    pair = Pair(framer_cls, client_options=client_options)
    sid = pair.client.open_call("count", end_stream=True)
    pair.exchange()
    return pair, sid


def test_a_batch_goes_out_in_order_when_output_is_collected(framer_cls, frame_run):
    pair, sid = streaming_pair(framer_cls)
    batch = pair.server.open_batch(sid)
    assert pair.server.open_batch(sid) is batch
    sent = [bytes([i]) * (i + 1) for i in range(200)]
    batch.extend(sent)
    assert pair.server.has_data_to_send
    events = pair.exchange()
    assert messages(events["client"], sid) == sent
    assert batch == []


def test_what_else_the_stream_sends_goes_after_its_batch(framer_cls, frame_run):
    pair, sid = streaming_pair(framer_cls)
    batch = pair.server.open_batch(sid)
    batch += [b"\x01", b"\x02"]
    pair.server.send_message(sid, b"\x03")  # send_message frames the batch first
    batch.append(b"\x04")
    pair.server.send_trailers(sid, Status.OK)  # and so do the trailers
    events = pair.exchange()
    assert messages(events["client"], sid) == [b"\x01", b"\x02", b"\x03", b"\x04"]
    assert isinstance(events["client"][-1], CallEnded)


def test_a_batch_respects_credit_and_says_when_it_ran_out(framer_cls, frame_run):
    window = 2000
    pair, sid = streaming_pair(framer_cls, stream_window=window)
    batch = pair.server.open_batch(sid)
    sent = [bytes([i]) * 30 for i in range(100)]  # 3000 bytes: more than the window
    batch.extend(sent)
    assert pair.server.flush_batch(sid) is False
    assert pair.server.send_buffered(sid) == 3000 - window
    received = messages(pair.exchange()["client"], sid)
    assert received == sent[: window // 30]  # and 20 bytes of the next one, still incomplete
    for payload in received:
        pair.client.consumed(sid, len(payload))
    events = pair.exchange()
    assert received + messages(events["client"], sid) == sent
    assert any(isinstance(e, SendCreditAvailable) for e in events["server"])
    assert pair.server.flush_batch(sid) is True


def test_a_batch_queued_behind_output_waiting_for_credit_stays_behind_it(framer_cls, frame_run):
    pair, sid = streaming_pair(framer_cls, stream_window=1024)
    assert pair.server.send_message(sid, b"\x01" * 1100) is False  # 76 bytes wait
    batch = pair.server.open_batch(sid)
    batch += [b"\x02", b"\x03"]
    assert pair.server.flush_batch(sid) is False
    received: list[bytes] = []
    for _ in range(10):
        arrived = messages(pair.exchange()["client"], sid)
        for payload in arrived:
            pair.client.consumed(sid, len(payload))
        received += arrived
    assert received == [b"\x01" * 1100, b"\x02", b"\x03"]
    assert pair.server.flush_batch(sid) is True


def test_a_cancelled_stream_drops_its_batch(framer_cls, frame_run):
    pair, sid = streaming_pair(framer_cls)
    batch = pair.server.open_batch(sid)
    batch.append(b"\x01")
    pair.server.data_to_send()  # framed already: it goes
    batch.append(b"\x02")
    pair.client.cancel(sid)
    pair.server.receive_data(pair.client.data_to_send())
    assert batch == [] and pair.server.flush_batch(sid) is True
    batch.append(b"\x03")  # a handler that has not noticed yet: nothing goes out
    assert pair.server.data_to_send() == b""


def test_after_the_trailers_a_batch_is_dropped_even_while_output_waits_for_credit(framer_cls, frame_run):
    """Trailers queued behind output that waits for credit: the stream lives on until that
    output leaves, but it sends no more messages; what a handler still appends to its old batch
    list is never framed, and collecting output does not fail."""
    pair, sid = streaming_pair(framer_cls, stream_window=1024)
    batch = pair.server.open_batch(sid)
    batch += [b"\x01" * 600, b"\x02" * 600]  # 1200 bytes: 176 wait for credit
    pair.server.send_trailers(sid, Status.OK)
    batch.append(b"\x03")  # a handler that has not noticed yet
    received, ended = [], False
    for _ in range(10):
        events = pair.exchange()["client"]
        for payload in messages(events, sid):
            pair.client.consumed(sid, len(payload))
            received.append(payload)
        ended = ended or any(isinstance(e, CallEnded) for e in events)
    assert received == [b"\x01" * 600, b"\x02" * 600] and ended
    assert pair.server.flush_batch(sid) is True


@pytest.mark.parametrize("bad", [b"", "text", bytearray(b"x")])
def test_a_bad_item_is_a_local_protocol_error(framer_cls, frame_run, bad):
    pair, sid = streaming_pair(framer_cls)
    batch = pair.server.open_batch(sid)
    batch += [b"\x01", bad]
    with pytest.raises(LocalProtocolError, match="batch"):
        pair.server.flush_batch(sid)
    assert batch == []


def test_an_oversize_item_is_a_local_protocol_error(framer_cls, frame_run):
    pair, sid = streaming_pair(framer_cls)
    batch = pair.server.open_batch(sid)
    batch.append(b"\x01" * (pair.server.batch_limit + 1))
    with pytest.raises(LocalProtocolError, match="batch"):
        pair.server.data_to_send()


def test_no_batch_on_a_stream_that_cannot_send(framer_cls):
    pair, sid = streaming_pair(framer_cls)
    with pytest.raises(LocalProtocolError):
        pair.client.open_batch(sid)  # the client half-closed it
    pair.server.send_trailers(sid, Status.OK)
    with pytest.raises(LocalProtocolError):
        pair.server.open_batch(sid)  # ended


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 300), max_size=40),
    stream_id=st.integers(1, 2**32 - 1),
    credit=st.integers(0, 5000),
    max_size=st.integers(1, 400),
)
def test_c_frame_run_matches_its_python_twin(sizes, stream_id, credit, max_size):
    if "c" not in FRAME_RUNS:
        pytest.skip("trpc._speedups is unavailable")
    payloads = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    results = []
    for run in (FRAME_RUNS["c"], _frame_run_py):
        try:
            results.append(run(payloads, stream_id, credit, max_size))
        except (TypeError, ValueError) as exc:
            results.append(type(exc))
    assert results[0] == results[1]
    if not isinstance(results[1], type):
        frames, count, size = results[1]
        assert size == sum(sizes[:count]) <= credit
        assert count == len(sizes) or size + sizes[count] > credit
        assert len(frames) == size + 10 * count
