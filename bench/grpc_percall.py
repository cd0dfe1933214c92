"""CPU and instructions per call of trpc's server over its gRPC wire, against a raw HTTP/2
client in the same process.

    python bench/grpc_percall.py [--workload greet|echo] [--concurrency 64] [--repeat 5] [--json]
    python bench/grpc_percall.py --instructions            # under callgrind (minutes)

``bench/grpc_wire.py`` measures the gRPC wire end to end against grpc.aio, two processes
whose wake-ups move the figures by a third from run to run on a shared machine.  This one
measures the server alone, as ``bench/percall.py`` does for trpc's wire: a real
``trpc.Server`` on one end of a socketpair, and on the other, in the same Trio run, a client
that speaks just enough HTTP/2 to drive it with bytes prepared before timing:

- the requests are grpcio's (the same headers in the same order, HPACK-encoded by one
  ``hpack.Encoder`` for the whole connection, so that later requests refer to its dynamic
  table as grpcio's do), ``--concurrency`` calls at a time, HEADERS then DATA with END_STREAM;
- the responses are scanned frame by frame for the trailers (HEADERS with END_STREAM) that end
  each call; the client answers the server's SETTINGS and PINGs and returns connection credit.

Workloads: ``greet``, bench/compare.py's W1/W2 call (``{"name": "Ada"}`` in, ``{"message":
"Hello Ada"}`` out, CBOR, the arguments array on the way in as grpc_wire's client sends it);
``echo``, W4's (1 MiB of bytes each way, the request in 128 KiB DATA frames, as grpcio sends them
to a server that allows them).

It reports calls/s and the process's CPU per call (``time.process_time``: the client's scan
is included, a small share), the median of ``--repeat`` runs.  ``--instructions`` runs this
script twice under callgrind with different call counts and reports the difference of the
instruction totals over the difference of the calls: the instructions of one more call, free
of start-up and of the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
import hpack
import trio
import trio.socket

import trpc

from _machine import machine

HERE = Path(__file__).resolve().parent
TIME_LIMIT = 120  # seconds: a run that takes longer fails instead of hanging
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, WINDOW_UPDATE = 0, 1, 4, 6, 8
END_STREAM, END_HEADERS, ACK = 1, 4, 1
#: What grpcio announces (SETTINGS as read off a grpcio 1.85 client): 4 MiB frames and windows.
CLIENT_SETTINGS = ((2, 0), (3, 0), (4, 4 << 20), (5, 4 << 20), (6, 16384))
#: Connection credit the client opens at once, and tops up once half of it is spent.
CLIENT_WINDOW = 1 << 30
REQUEST_FRAME = 131072
ECHO_SIZE = 1 << 20


def frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + stream_id.to_bytes(4, "big") + payload


class Bench(trpc.Service, name="bench.Bench"):
    @trpc.unary
    async def Greet(self, request: Any) -> Any:  # Any: no protobuf mapping, so grpcio's requests are CBOR
        return {"message": "Hello " + request["name"]}

    @trpc.unary
    async def Echo(self, data: Any) -> Any:
        return data


class RawClient:
    """The client's half: requests prepared in advance, responses scanned for trailers."""

    def __init__(self, stream: trio.SocketStream, workload: str) -> None:
        self.stream = stream
        self.encoder = hpack.Encoder()
        self.path = b"/bench.Bench/Greet" if workload == "greet" else b"/bench.Bench/Echo"
        argument = {"name": "Ada"} if workload == "greet" else b"\xab" * ECHO_SIZE
        body = cbor2.dumps([[argument]])
        self.message = b"\0" + len(body).to_bytes(4, "big") + body
        self.buffer = bytearray()
        self.window = 65535  # the server's connection window for our DATA
        self.received = 0
        self.expected = 0
        #: During the warm-up, every header block is decoded and each call's status checked
        #: (a call that failed would be measured as fast as one that worked).
        self.decoder: hpack.Decoder | None = hpack.Decoder()

    def request(self, stream_id: int) -> bytes:
        headers = [
            (b":path", self.path), (b":authority", b"127.0.0.1:50051"), (b":method", b"POST"),
            (b":scheme", b"http"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
            (b"grpc-accept-encoding", b"identity, deflate, gzip"),
            (b"user-agent", b"grpc-python/1.85.3 grpc-c/58.0.0 (linux; chttp2)"),
        ]
        parts = [frame(HEADERS, END_HEADERS, stream_id, self.encoder.encode(headers))]
        message = self.message
        for start in range(0, len(message), REQUEST_FRAME):
            last = start + REQUEST_FRAME >= len(message)
            parts.append(frame(DATA, END_STREAM if last else 0, stream_id, message[start:start + REQUEST_FRAME]))
        return b"".join(parts)

    async def start(self) -> None:
        settings = b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in CLIENT_SETTINGS)
        await self.stream.send_all(PREFACE + frame(SETTINGS, 0, 0, settings)
                                   + frame(WINDOW_UPDATE, 0, 0, (CLIENT_WINDOW - 65535).to_bytes(4, "big")))

    async def send(self, data: bytes, calls: int) -> None:
        """Send a batch of requests once the server's connection window takes their DATA."""
        payload = len(self.message) * calls
        while self.window < payload:
            await self.read()
        self.window -= payload
        await self.stream.send_all(data)

    async def read(self) -> None:
        """One receive: count the calls ended, answer what HTTP/2 asks an answer to."""
        chunk = await self.stream.receive_some(1 << 20)
        if not chunk:
            raise SystemExit("the server closed the connection")
        buf = self.buffer
        buf += chunk
        pos, replies = 0, []
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if len(buf) - pos - 9 < length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            if ftype == HEADERS and self.decoder is not None:
                fields = list(self.decoder.decode(bytes(buf[pos + 9:pos + 9 + length]), raw=True))
                if flags & END_STREAM and (b"grpc-status", b"0") not in fields:
                    raise SystemExit(f"a call failed: {fields}")
            if ftype == HEADERS and flags & END_STREAM:
                self.expected -= 1
            elif ftype == DATA:
                self.received += length
            elif ftype == SETTINGS and not flags & ACK:
                replies.append(frame(SETTINGS, ACK, 0, b""))
            elif ftype == PING and not flags & ACK:
                replies.append(frame(PING, ACK, 0, bytes(buf[pos + 9:pos + 17])))
            elif ftype == WINDOW_UPDATE and not int.from_bytes(buf[pos + 5:pos + 9], "big"):
                self.window += int.from_bytes(buf[pos + 9:pos + 13], "big")
            pos += 9 + length
        del buf[:pos]
        if self.received > CLIENT_WINDOW // 2:
            replies.append(frame(WINDOW_UPDATE, 0, 0, self.received.to_bytes(4, "big")))
            self.received = 0
        if replies:
            await self.stream.send_all(b"".join(replies))

    async def run_batch(self, data: bytes, calls: int) -> None:
        self.expected += calls
        await self.send(data, calls)
        while self.expected > 0:
            await self.read()


async def measure(workload: str, calls: int, concurrency: int) -> tuple[float, float, int]:
    """Calls/s and CPU us per measured call, and the calls made (warm-up included)."""
    rounds = max(2, calls // concurrency)
    warmup = max(1, rounds // 5)
    a, b = trio.socket.socketpair()
    client = RawClient(trio.SocketStream(b), workload)
    batches = [b"".join(client.request(1 + 2 * (r * concurrency + i)) for i in range(concurrency))
               for r in range(warmup + rounds)]
    server = trpc.Server(Bench(), max_message_size=8 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, trio.SocketStream(a))
        await client.start()
        for data in batches[:warmup]:
            await client.run_batch(data, concurrency)
        client.decoder = None
        started, cpu = time.perf_counter(), time.process_time()
        for data in batches[warmup:]:
            await client.run_batch(data, concurrency)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    done = rounds * concurrency
    return done / elapsed, cpu / done * 1e6, (warmup + rounds) * concurrency


async def run(workload: str, calls: int, concurrency: int) -> tuple[float, float, int]:
    with trio.fail_after(TIME_LIMIT):
        return await measure(workload, calls, concurrency)


def count_instructions(workload: str, calls: int, concurrency: int) -> tuple[int, int]:
    """The instruction total of one run of this script under callgrind, and its calls made."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "TRPC_REQUIRE_C": "1"}
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
             "--workload", workload, "--calls", str(calls), "--concurrency", str(concurrency),
             "--repeat", "1", "--json"],
            capture_output=True, text=True, timeout=1800, env=env, cwd=HERE,
        )
        if done.returncode != 0:
            raise SystemExit(f"grpc_percall.py: callgrind run failed: {done.stderr.strip().splitlines()[-3:]}")
        made = json.loads(done.stdout.strip().splitlines()[-1])["calls_made"]
        for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1]), made
        raise SystemExit("grpc_percall.py: no instruction total in the callgrind output")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workload", choices=["greet", "echo"], default="greet")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--calls", type=int, help="calls measured per run (default 20,000; echo 300)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="instructions per call under callgrind")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    calls = args.calls or (20_000 if args.workload == "greet" else 300)
    if args.instructions:
        small, large = (calls // 4, calls) if args.calls else ((2_000, 6_000) if args.workload == "greet" else (20, 60))
        (i_small, n_small), (i_large, n_large) = (count_instructions(args.workload, n, args.concurrency)
                                                  for n in (small, large))
        per_call = (i_large - i_small) / (n_large - n_small)
        print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "workload": args.workload,
                          "concurrency": args.concurrency, "instructions_per_call": round(per_call)}))
        return
    runs = [trio.run(run, args.workload, calls, args.concurrency) for _ in range(args.repeat)]
    result = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d"), "workload": args.workload,
        "concurrency": args.concurrency, "calls": calls,
        "calls_per_s": statistics.median(r[0] for r in runs),
        "cpu_us_per_call": statistics.median(r[1] for r in runs),
        "cpu_us_per_call_runs": [round(r[1], 2) for r in runs],
        "calls_made": runs[0][2],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"trpc server, gRPC wire, {args.workload}, {args.concurrency} in flight; {machine()}; "
          f"median of {args.repeat}: {result['calls_per_s']:,.0f} calls/s, "
          f"{result['cpu_us_per_call']:.1f} us CPU per call (runs: {result['cpu_us_per_call_runs']})")


if __name__ == "__main__":
    main()
