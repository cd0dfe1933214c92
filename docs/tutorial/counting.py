"""A server interceptor that counts calls by method and status (docs/howto/interceptors.md)."""

from __future__ import annotations

from collections import Counter

import trpc


class CallCounter(trpc.ServerInterceptor):
    """Counts each call once it has ended, by (method, status name)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    async def intercept(self, call, proceed):
        status = "OK"
        try:
            return await proceed()
        except trpc.RpcError as error:
            status = error.status.name
            raise
        except Exception:
            status = "INTERNAL"  # what the client sees for any other exception
            raise
        except BaseException:  # trio.Cancelled: the call's deadline, the client's cancel...
            status = (call.cancel_reason or trpc.Status.CANCELLED).name
            raise
        finally:
            self.counts[call.method, status] += 1
