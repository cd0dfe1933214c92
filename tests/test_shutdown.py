"""Graceful shutdown: running calls finish, new ones are refused, then everything closes."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import trio

import trpc
from trpc import RpcError, Status

from .helpers import listening_address



async def run_server(service, task_status=trio.TASK_STATUS_IGNORED):
    server = trpc.Server(service)
    done = trio.Event()

    async def serve(task_status):
        await server.serve_tcp(0, task_status=task_status)
        done.set()

    async with trio.open_nursery() as nursery:
        server.address = await nursery.start(serve)
        server.done = done
        task_status.started(server)


async def test_running_calls_finish_and_new_ones_are_refused(nursery, service):
    server = await nursery.start(run_server, service)
    async with trpc.open_client(server.address) as client:
        results = []

        async def slow():
            results.append(await client.sleep_then(0.3, "finished"))

        async with trio.open_nursery() as calls:
            calls.start_soon(slow)
            await trio.sleep(0.05)
            calls.start_soon(server.shutdown, 5)
            await trio.sleep(0.05)
            with pytest.raises(RpcError) as info:
                await client.greet("late")
            assert info.value.status is Status.UNAVAILABLE
        assert results == ["finished"]
    with trio.fail_after(5):
        await server.done.wait()  # serve_tcp returned
    assert server.connections == 0 and server.running_calls == 0
    with pytest.raises(OSError):
        await trio.open_tcp_stream(*server.address)  # no longer listening


async def test_calls_still_running_after_the_grace_are_cancelled(nursery, service):
    server = await nursery.start(run_server, service)
    async with trpc.open_client(server.address) as client:
        async with trio.open_nursery() as calls:

            async def blocked():
                with pytest.raises(RpcError) as info:
                    await client.block()
                assert info.value.status is Status.UNAVAILABLE

            calls.start_soon(blocked)
            await service.started.wait()
            with trio.fail_after(5):
                await server.shutdown(grace=0.2)
    assert service.cancel_reasons == [Status.UNAVAILABLE]
    with trio.fail_after(5):
        await server.done.wait()


async def test_trpc_serve_shuts_down_on_sigterm():
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trpc", "serve", "trpc.examples:Greeter", "--port", "0", "--grace", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        address = await listening_address(process)
        async with trpc.open_client(address) as client:
            async with trio.open_nursery() as nursery:
                result = []

                async def sleeper():
                    result.append(await client.sleep(0.5))

                nursery.start_soon(sleeper)
                await trio.sleep(0.2)
                process.send_signal(signal.SIGTERM)
            assert result and result[0] >= 0.5  # the running call finished
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
