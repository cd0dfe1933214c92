"""Status codes: gRPC's seventeen, with the same numbers and meanings.

A call ends with exactly one status.  The numbers are the ones gRPC uses, so that people (and
tools) who know gRPC read trpc's statuses without a table.
"""

from __future__ import annotations

import enum

__all__ = ["Status"]


class Status(enum.IntEnum):
    """The status a call ends with: gRPC's codes, numbers and meanings."""

    #: The call completed successfully.
    OK = 0
    #: The call was cancelled, typically by the caller.
    CANCELLED = 1
    #: An error that fits no other code; also a status number the receiver does not know.
    UNKNOWN = 2
    #: The arguments were wrong whatever the state of the system (e.g. they do not bind to the
    #: method's signature, or cannot be decoded).
    INVALID_ARGUMENT = 3
    #: The deadline passed before the call completed.
    DEADLINE_EXCEEDED = 4
    #: A requested entity was not found.
    NOT_FOUND = 5
    #: The entity a client tried to create already exists.
    ALREADY_EXISTS = 6
    #: The caller may not do this.
    PERMISSION_DENIED = 7
    #: A resource ran out: message or frame too large, too many concurrent streams, quota.
    RESOURCE_EXHAUSTED = 8
    #: The system is not in the state the operation needs.
    FAILED_PRECONDITION = 9
    #: The operation was aborted (concurrency conflict, transaction abort).
    ABORTED = 10
    #: An argument was outside the valid range.
    OUT_OF_RANGE = 11
    #: The method does not exist or is not supported by this server.
    UNIMPLEMENTED = 12
    #: An invariant was broken; a bug.  Handler exceptions are reported with this code.
    INTERNAL = 13
    #: The service is unavailable (connection lost or refused, server shutting down).
    #: Usually transient: a retry may succeed.
    UNAVAILABLE = 14
    #: Unrecoverable data loss or corruption.
    DATA_LOSS = 15
    #: The caller has no valid authentication credentials.
    UNAUTHENTICATED = 16

    @classmethod
    def from_wire(cls, code: int) -> "Status":
        """The status for a number read off the wire; unknown numbers become UNKNOWN."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN
