"""gRPC for trpc: the same services over HTTP/2 (docs/PROTOCOL.md, "gRPC")."""
