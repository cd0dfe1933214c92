"""Every public name is exported from ``trpc`` once, documented, and says it lives there."""

import trpc


def test_all_is_exact_and_sorted():
    public = {name for name in dir(trpc) if not name.startswith("_")} - {"examples"}
    modules = {name for name in public if type(getattr(trpc, name)).__name__ == "module"}
    assert set(trpc.__all__) == (public - modules) | {"__version__"}
    assert len(trpc.__all__) == len(set(trpc.__all__))


def test_public_objects_are_documented_and_live_in_trpc():
    for name in trpc.__all__:
        obj = getattr(trpc, name)
        if callable(obj):
            assert obj.__doc__, name
            assert getattr(obj, "__module__", "trpc") == "trpc", name


def test_one_exception_hierarchy():
    for name in ["ConfigError", "RpcError", "ProtocolError", "LocalProtocolError", "RemoteProtocolError",
                 "FrameTooLargeError", "TruncatedFrameError", "TransportError"]:
        assert issubclass(getattr(trpc, name), trpc.TrpcError)
