"""gRPC over HTTP/2 for trpc's server: the same services, on the same port, callable by grpcio.

A second wire under the same call layer, not a second server.  :class:`GrpcConnection`
(``trpc.grpc._connection``) is a sans-IO adapter over ``h2``'s ``H2Connection`` with the methods
of :class:`trpc._events.WireConnection` (the server's half), reporting the same events as
trpc's own wire; ``trpc._server`` runs it with the same Trio layer, dispatch, handlers,
deadlines, cancellation, metadata, interceptors and limits.  Which wire a connection speaks the
server tells from its first bytes (the HTTP/2 client preface ``PRI * HTTP/2.0...`` against
trpc's ``TRPC``), or under TLS from ALPN (``h2`` against ``trpc/1``).  The rules, as bytes on
the wire, are in docs/PROTOCOL.md, section "gRPC".

Codecs: the content type picks them, per call
-----------------------------------------------
``application/grpc+cbor`` carries the very CBOR values of the trpc wire (arguments as
``[[args], {kwargs}]``, results and items as themselves): the call layer's own CBOR path, no
codec object.  ``application/grpc`` and ``application/grpc+proto`` (protobuf) need a codec for
the method, which the server looks up in ``Server._grpc_codecs``: a dict from every name a
client may send (path, and unambiguous short name) to a codec, built once when the server is
built by ``trpc.grpc._proto.build_codecs(methods)`` if that module exists (``methods``: the
server's :attr:`~trpc.Server.methods`, path -> :class:`~trpc._service.MethodInfo`; it returns
``{path: codec}`` for the methods whose types map to protobuf, and raises ``TypeError`` at
start-up for what it refuses).  A protobuf call to a method without a codec ends with
UNIMPLEMENTED "no protobuf mapping for this method".

A codec is any object with these four methods (each raising ``trpc.RpcError`` with
INVALID_ARGUMENT for a request it cannot read, or INTERNAL for a response it cannot write):

- ``decode_request(data: bytes) -> tuple[list, dict]``: a unary or server-streaming call's one
  request message -> the handler's positional and keyword arguments;
- ``encode_response(value) -> bytes``: a unary or client-streaming handler's result;
- ``decode_item(data: bytes) -> Any``: one request message of a client-streaming or
  bidirectional call -> the item the handler's request iterator yields;
- ``encode_item(value) -> bytes``: one item a server-streaming or bidirectional handler yields.
"""

from __future__ import annotations

from ._connection import ALPN_GRPC, ALPN_TRPC, GrpcConnection, looks_like_http2

__all__ = ["GrpcConnection", "ALPN_GRPC", "ALPN_TRPC", "looks_like_http2"]
