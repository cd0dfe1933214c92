"""grpcio (synchronous API) peer of bench/compare.py.

    grpc_sync_peer.py serve [--workers N]
    grpc_sync_peer.py client HOST:PORT w1|w2|w3|w4 [...]

No protoc: generic handlers (``grpc.method_handlers_generic_handler``) with the common CBOR
codec (``_common.cbor_dumps`` / ``cbor_loads``) as (de)serializers, served by ``grpc.server`` on a
``ThreadPoolExecutor`` (16 workers by default); the client makes multi-callables on one channel.  Both sides raise the message size
limits to 8 MiB.

W2 (64 in flight on ONE channel) uses futures, not threads: the main thread starts calls with
``multicallable.future(request)`` while fewer than 64 are outstanding (a semaphore), and each
future's done-callback (run on grpc's own thread) checks the reply, records the latency and
frees a slot.  W1, W3 and W4 are plain blocking calls from the main thread.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent import futures
from functools import partial

import grpc

import _common

OPTIONS = [
    ("grpc.max_send_message_length", _common.MAX_MESSAGE),
    ("grpc.max_receive_message_length", _common.MAX_MESSAGE),
]
clock, clock_ns = _common.clock, _common.clock_ns


def greet(request, context):
    return _common.greet(request)


def count(n, context):
    for i in range(n):
        yield {"i": i}


def echo(data, context):
    return data


def handlers() -> grpc.GenericRpcHandler:
    kwargs = dict(request_deserializer=_common.cbor_loads, response_serializer=_common.cbor_dumps)
    return grpc.method_handlers_generic_handler(
        _common.GRPC_SERVICE,
        {
            "Greet": grpc.unary_unary_rpc_method_handler(greet, **kwargs),
            "Count": grpc.unary_stream_rpc_method_handler(count, **kwargs),
            "Echo": grpc.unary_unary_rpc_method_handler(echo, **kwargs),
        },
    )


def serve(workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=OPTIONS)
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port(f"{_common.HOST}:0")
    server.start()
    _common.listening(_common.HOST, port)
    server.wait_for_termination()


def _blocking(call, request, check, duration: float) -> tuple[list[int], float]:
    latencies: list[int] = []
    record = latencies.append
    started = clock()
    stop_at = started + duration
    while clock() < stop_at:
        start = clock_ns()
        reply = call(request)
        record(clock_ns() - start)
        check(reply)
    return latencies, clock() - started


def _concurrent(call, duration: float) -> tuple[list[int], float]:
    latencies: list[int] = []
    errors: list[BaseException] = []
    slots = threading.Semaphore(_common.CONCURRENCY)
    record = latencies.append

    def done(start: int, future: grpc.Future) -> None:
        try:
            reply = future.result()
            record(clock_ns() - start)
            _common.check_greet(reply)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            slots.release()

    started = clock()
    stop_at = started + duration
    while clock() < stop_at and not errors:
        if not slots.acquire(timeout=10):
            raise TimeoutError("no call completed in 10 s")
        call.future(_common.GREET_REQUEST, timeout=30).add_done_callback(partial(done, clock_ns()))
    for _ in range(_common.CONCURRENCY):  # wait for the calls still in flight
        if not slots.acquire(timeout=30):
            raise TimeoutError("calls still in flight after 30 s")
    elapsed = clock() - started
    if errors:
        raise errors[0]
    return latencies, elapsed


def _stream(call, n: int, cap: float) -> tuple[int, bool, float]:
    received = 0
    started = clock()
    cap_at = started + cap
    items = call(n)
    try:
        for item in items:
            if type(item) is not dict or item.get("i") != received:
                _common.check_item(item, received)
            received += 1
            if not received & 1023 and clock() > cap_at:
                return received, received < n, clock() - started
    finally:
        items.cancel()
    return received, False, clock() - started


def measure(args: argparse.Namespace) -> dict:
    with grpc.insecure_channel(args.address, options=OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        kwargs = dict(request_serializer=_common.cbor_dumps, response_deserializer=_common.cbor_loads)
        greet_call = channel.unary_unary(_common.GREET_PATH, **kwargs)
        echo_call = channel.unary_unary(_common.ECHO_PATH, **kwargs)
        count_call = channel.unary_stream(_common.COUNT_PATH, **kwargs)
        if args.workload == "w1":
            _blocking(greet_call, _common.GREET_REQUEST, _common.check_greet, args.warmup)
            return _common.unary_result(*_blocking(greet_call, _common.GREET_REQUEST, _common.check_greet, args.duration))
        if args.workload == "w2":
            _concurrent(greet_call, args.warmup)
            return _common.unary_result(*_concurrent(greet_call, args.duration))
        if args.workload in ("w4", "w4z"):
            payload = _common.PAYLOAD if args.workload == "w4" else _common.TEXT_PAYLOAD

            def check(reply: object) -> None:
                _common.check_echo(reply, payload)

            _blocking(echo_call, payload, check, args.warmup)
            return _common.echo_result(*_blocking(echo_call, payload, check, args.duration))
        warm = min(1000, args.messages)
        got, _, _ = _stream(count_call, warm, args.cap)
        if got != warm:
            raise _common.WrongAnswer(f"the warm-up stream ended after {got} of {warm} messages")
        received, capped, elapsed = _stream(count_call, args.messages, args.cap)
        return _common.stream_result(received, args.messages, elapsed, capped)


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "serve":
        parser = argparse.ArgumentParser()
        parser.add_argument("--workers", type=int, default=16)
        serve(parser.parse_args(rest).workers)
        return 0
    return _common.run_client(__doc__.splitlines()[0], rest, measure)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
