"""grpcio channels whose calls carry CBOR: every call adds the metadata ``trpc-codec: cbor``.

grpcio always sends ``content-type: application/grpc`` (and drops one given as metadata), which a
trpc server reads as protobuf for a method that maps to protobuf; a CBOR client says so with
``trpc-codec: cbor`` (docs/PROTOCOL.md section 14).  These interceptors add it to every call of a
sync or a ``grpc.aio`` channel.
"""

from __future__ import annotations

import collections

import grpc
import grpc.aio

CBOR = ("trpc-codec", "cbor")


class _Details(collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


def _with_cbor(details):
    metadata = list(details.metadata or ()) + [CBOR]
    return _Details(details.method, details.timeout, metadata, details.credentials,
                    getattr(details, "wait_for_ready", None), getattr(details, "compression", None))


class _Sync(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
            grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_with_cbor(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(_with_cbor(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(_with_cbor(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(_with_cbor(details), requests)


def cbor_channel(target: str, credentials=None) -> grpc.Channel:
    """A sync grpcio channel to ``target`` (TLS with ``credentials``) whose calls carry CBOR."""
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    return grpc.intercept_channel(channel, _Sync())


def _aio_with_cbor(details):
    metadata = grpc.aio.Metadata(*(details.metadata or ()), CBOR)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                      details.wait_for_ready)


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_aio_with_cbor(details), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_aio_with_cbor(details), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, requests):
        return await continuation(_aio_with_cbor(details), requests)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, requests):
        return await continuation(_aio_with_cbor(details), requests)


def cbor_aio_channel(target: str) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target`` whose calls carry CBOR."""
    return grpc.aio.insecure_channel(
        target, interceptors=[_AioUnaryUnary(), _AioUnaryStream(), _AioStreamUnary(), _AioStreamStream()])
