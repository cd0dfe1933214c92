"""The client's configuration: one document for every method, in the shape of gRPC's service config.

Theory of operation
-------------------
A :class:`ClientConfig` is read once (``from_file``, ``from_json``, ``from_dict``) and then only
asked questions, so it is a tree of frozen dataclasses and nothing in it changes after parsing
except a lookup cache.  The format is gRPC's service-config JSON (camelCase keys, durations as
``"1.5s"``, status codes by name) where gRPC has the key, plus ``connectionBackoff``,
``healthCheck`` and ``idempotent``, which it keeps elsewhere; docs/CONFIG.md is the reference.

Reading is two steps with one owner each:

- *Form* (this module's ``_parse_*`` functions): is the JSON value the right type, is every key
  known (a typo must not pass as "not set"), is a name listed once.  They turn JSON into Python
  values (durations into float seconds, status names into :class:`~trpc.Status`).
- *Range* (each dataclass's ``__post_init__``): is the value allowed (``maxAttempts >= 2``,
  backoffs above zero...).  A dataclass built in Python is checked by the same code; the parser
  catches its :class:`~trpc.ConfigError` and puts the JSON path in front of the field.

Per-method lookup follows gRPC: a wire name ``"kv.Store/get"`` is service ``kv.Store`` and
method ``get``; a flat name ``"greet"`` is service ``""`` and method ``greet``, unless the
client knows the path it stands for (``ClientConfig.method(name, path)``: the server's INFO
frame said), when the path's entries come first.  The most
specific entry wins *whole*: the exact (service, method) entry, else the service's entry, else
the default ``{}``; fields are never merged across levels, so an entry that sets only
``timeout`` has no retry policy even if the service's entry has one.  The answer for a name is
cached, because the client asks for every call.

Two small state machines, for the channel to drive, live here too because they are pure
arithmetic over these settings: :class:`Backoff` (gRPC's connection-backoff.md, exactly) and
:class:`RetryThrottle` (gRPC's retry throttling, A6, in integer thousandths of a token as
gRPC keeps them, so no rounding drifts).  Neither reads a clock or sleeps; the caller does.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from random import Random
from types import MappingProxyType
from typing import Any, Iterable, Mapping, TypeGuard, TypeVar

from ._errors import ConfigError
from ._status import Status

_T = TypeVar("_T")

__all__ = [
    "LOAD_BALANCING_POLICIES",
    "MAX_RETRY_ATTEMPTS",
    "MAX_RETRY_TOKENS",
    "Backoff",
    "ClientConfig",
    "ConnectionBackoff",
    "MethodConfig",
    "RetryPolicy",
    "RetryThrottle",
    "RetryThrottling",
    "split_method_name",
]

#: Values of ``loadBalancingPolicy`` (compared without regard to case, as gRPC does).
LOAD_BALANCING_POLICIES = ("pick_first", "round_robin", "least_loaded")

#: gRPC's retry design allows at most 5 attempts: a larger ``maxAttempts`` is lowered to it
#: rather than refused, as gRPC does, so one config serves both.
MAX_RETRY_ATTEMPTS = 5

#: gRPC's retry design bounds ``maxTokens`` to (0, 1000].
MAX_RETRY_TOKENS = 1000

#: Names whose answer ``ClientConfig.method`` remembers.  A program calls a few dozen methods;
#: the bound keeps a caller that makes names up (a proxy, a fuzzer) from growing it forever.
#: Beyond it, answers are still right, found with three dictionary lookups instead of one.
_METHOD_CACHE_LIMIT = 4096


def split_method_name(name: str) -> tuple[str, str]:
    """The (service, method) of a wire name: ``"kv.Store/get"`` -> ``("kv.Store", "get")``,
    ``"greet"`` -> ``("", "greet")``."""
    service, sep, method = name.rpartition("/")
    return (service, method) if sep else ("", name)


# ---------------------------------------------------------------------------------------------
# The settings (range checks live in __post_init__)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_seconds(value: Any, name: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(name, f"must be a duration greater than 0, got {value!r}")


def _check_int(value: Any, name: str, minimum: int, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(name, f"must be {bound}, got {value}")


def _check_optional_bool(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(name, f"must be true or false, got {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried (gRPC's ``retryPolicy``).

    Attributes:
        max_attempts: attempts in all, the first included; at least 2; values above 5 become 5
            (gRPC's cap).
        initial_backoff: seconds; the first retry waits a random time in [0, initial_backoff).
        max_backoff: seconds; no retry waits longer.
        backoff_multiplier: each retry's ceiling is the previous one's times this.
        retryable_status_codes: the statuses that are retried (not OK; at least one).
    """

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    backoff_multiplier: float
    retryable_status_codes: frozenset[Status]

    def __post_init__(self) -> None:
        _check_int(self.max_attempts, "max_attempts", 2)
        if self.max_attempts > MAX_RETRY_ATTEMPTS:
            object.__setattr__(self, "max_attempts", MAX_RETRY_ATTEMPTS)
        _check_seconds(self.initial_backoff, "initial_backoff")
        _check_seconds(self.max_backoff, "max_backoff")
        if not _is_number(self.backoff_multiplier) or not (0 < self.backoff_multiplier < math.inf):
            raise ConfigError("backoff_multiplier", f"must be a number greater than 0, got {self.backoff_multiplier!r}")
        try:
            codes = frozenset(Status(code) for code in self.retryable_status_codes)
        except (TypeError, ValueError):
            raise ConfigError("retryable_status_codes", "must be statuses (trpc.Status or 0-16)") from None
        if not codes:
            raise ConfigError("retryable_status_codes", "must name at least one status")
        if Status.OK in codes:
            raise ConfigError("retryable_status_codes", "OK is not a failure and cannot be retried")
        object.__setattr__(self, "retryable_status_codes", codes)

    def delay(self, attempt: int, random: Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry).

        gRPC's retry design: uniform in [0, min(initial_backoff * backoff_multiplier **
        (attempt - 1), max_backoff)], drawn from ``random``.
        """
        if attempt < 1:
            raise ValueError(f"retries are numbered from 1, got {attempt}")
        try:
            ceiling = self.initial_backoff * self.backoff_multiplier ** (attempt - 1)
        except OverflowError:
            ceiling = math.inf
        return random.uniform(0, min(ceiling, self.max_backoff))


@dataclass(frozen=True)
class MethodConfig:
    """What the client does for the calls of one method (one ``methodConfig`` entry).

    ``None`` means the entry does not say, and the client's own setting applies.

    Attributes:
        timeout: seconds each call may take, above 0.
        wait_for_ready: wait for a backend instead of failing at once with UNAVAILABLE.
        idempotent: calls may safely run more than once.
        retry_policy: how failed calls are retried; ``None``: never.
        max_request_message_size: largest request message sent, in bytes.
        max_response_message_size: largest response message accepted, in bytes.
        compression: ``"zlib"``, ``"zstd"`` or ``"none"``: the coding of the request messages,
            asked of the server for its responses too (docs/PROTOCOL.md section 5).
    """

    timeout: float | None = None
    wait_for_ready: bool | None = None
    idempotent: bool | None = None
    retry_policy: RetryPolicy | None = None
    max_request_message_size: int | None = None
    max_response_message_size: int | None = None
    compression: str | None = None

    def __post_init__(self) -> None:
        _check_seconds(self.timeout, "timeout", optional=True)
        _check_optional_bool(self.wait_for_ready, "wait_for_ready")
        _check_optional_bool(self.idempotent, "idempotent")
        if self.retry_policy is not None and not isinstance(self.retry_policy, RetryPolicy):
            raise ConfigError("retry_policy", f"must be a RetryPolicy, got {type(self.retry_policy).__name__}")
        for name in ("max_request_message_size", "max_response_message_size"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, 0)
        if self.compression is not None:
            from .wire._compression import parse_coding

            try:
                parse_coding(self.compression)
            except ValueError as exc:
                raise ConfigError("compression", str(exc)) from None


_NO_CONFIG = MethodConfig()


@dataclass(frozen=True)
class RetryThrottling:
    """When retries stop for the whole client (gRPC's ``retryThrottling``); see :class:`RetryThrottle`.

    Attributes:
        max_tokens: the bucket's size and its starting level, in [1, 1000].
        token_ratio: tokens a success puts back; kept to three decimal places (cut, not rounded,
            as gRPC does), so at least 0.001.
    """

    max_tokens: int = 10
    token_ratio: float = 0.1

    def __post_init__(self) -> None:
        _check_int(self.max_tokens, "max_tokens", 1, MAX_RETRY_TOKENS)
        if not _is_number(self.token_ratio) or not math.isfinite(self.token_ratio):
            raise ConfigError("token_ratio", f"must be a number, got {self.token_ratio!r}")
        if self.milli_token_ratio < 1:
            raise ConfigError("token_ratio", f"must be at least 0.001 (three decimal places are kept), got {self.token_ratio!r}")
        object.__setattr__(self, "token_ratio", self.milli_token_ratio / 1000)

    @property
    def milli_token_ratio(self) -> int:
        """``token_ratio`` in thousandths of a token, the unit the throttle counts in."""
        # repr gives the shortest text that reads back as this float: the digits the JSON had.
        return int((Decimal(repr(self.token_ratio)) * 1000).to_integral_value(rounding=ROUND_DOWN))


@dataclass(frozen=True)
class ConnectionBackoff:
    """How soon the client tries again to connect (gRPC's connection-backoff.md, its defaults).

    Attributes:
        base_delay: seconds from the start of the first attempt to the start of the second.
        multiplier: each later delay is the previous one's times this (before jitter); at least 1.
        jitter: each delay after the first moves by a uniform fraction in [-jitter, +jitter]
            of itself; in [0, 1).
        max_delay: the delay before jitter is at most this (so a delay is at most
            ``max_delay * (1 + jitter)``); at least ``base_delay``.
        min_connect_timeout: an attempt gets at least this long to connect, even when the next
            delay is shorter (see :meth:`attempt_timeout`).  None (the default): the client's
            ``connect_timeout`` (10 s unless given), which also bounds the TLS handshake and
            the server's preface; gRPC's own default is 20 s.
    """

    base_delay: float = 1.0
    multiplier: float = 1.6
    jitter: float = 0.2
    max_delay: float = 120.0
    min_connect_timeout: float | None = None

    def __post_init__(self) -> None:
        _check_seconds(self.base_delay, "base_delay")
        _check_seconds(self.max_delay, "max_delay")
        _check_seconds(self.min_connect_timeout, "min_connect_timeout", optional=True)
        if not _is_number(self.multiplier) or not (1 <= self.multiplier < math.inf):
            raise ConfigError("multiplier", f"must be a number at least 1, got {self.multiplier!r}")
        if not _is_number(self.jitter) or not (0 <= self.jitter < 1):
            raise ConfigError("jitter", f"must be a number in [0, 1), got {self.jitter!r}")
        if self.max_delay < self.base_delay:
            raise ConfigError("max_delay", f"must not be below the base delay ({self.base_delay:g} s), got {self.max_delay:g}")

    def attempt_timeout(self, delay: float, connect_timeout: float) -> float:
        """How long an attempt may take to connect when the next one is due ``delay`` seconds
        after it started: ``max(delay, min_connect_timeout)``, where an unset
        ``min_connect_timeout`` is the client's ``connect_timeout``."""
        minimum = connect_timeout if self.min_connect_timeout is None else self.min_connect_timeout
        return max(delay, minimum)


class Backoff:
    """The delays between connection attempts: gRPC's connection-backoff.md, exactly.

    ``next_delay()`` returns the seconds from the start of one attempt to the start of the next:
    ``base_delay`` the first time; after that the backoff is multiplied by ``multiplier`` and
    capped at ``max_delay``, and the delay is that backoff plus a uniform draw in
    [-jitter * backoff, +jitter * backoff] from ``random``.  ``reset()`` (after a connection
    succeeds) starts the sequence again.

    Args:
        policy: the parameters (gRPC's defaults unless given).
        random: the source of jitter; a fresh ``random.Random()`` unless given (give a seeded
            one for a sequence that repeats).
    """

    def __init__(self, policy: ConnectionBackoff | None = None, random: Random | None = None) -> None:
        self.policy = policy if policy is not None else ConnectionBackoff()
        self._random = random if random is not None else Random()
        #: The backoff before jitter of the delay last returned; None until the first.
        self._backoff: float | None = None

    def next_delay(self) -> float:
        """Seconds from the start of the attempt now starting to the start of the next one."""
        policy = self.policy
        if self._backoff is None:
            self._backoff = policy.base_delay
            return policy.base_delay
        self._backoff = min(self._backoff * policy.multiplier, policy.max_delay)
        spread = policy.jitter * self._backoff
        return self._backoff + self._random.uniform(-spread, spread)

    def reset(self) -> None:
        """Start again from ``base_delay`` (a connection succeeded)."""
        self._backoff = None


class RetryThrottle:
    """gRPC's retry throttling: a token bucket shared by every call of a client.

    The bucket starts full (``max_tokens``).  Each attempt that fails with a retryable status
    takes one token; each success puts back ``token_ratio``; the level stays in
    [0, max_tokens].  Retries (never first attempts) are allowed only while the level is above
    ``max_tokens / 2``, so when most calls fail the client stops adding retries to the load.
    Counted in integer thousandths of a token, as gRPC does, so any sequence gives exactly the
    level that decimal arithmetic would.
    """

    def __init__(self, settings: RetryThrottling | None = None) -> None:
        self.settings = settings if settings is not None else RetryThrottling()
        self._max = self.settings.max_tokens * 1000
        self._ratio = self.settings.milli_token_ratio
        self._milli_tokens = self._max

    @property
    def tokens(self) -> float:
        """The bucket's level, in tokens (exact to the thousandth)."""
        return self._milli_tokens / 1000

    def record_failure(self) -> bool:
        """An attempt failed with a retryable status: take a token.  Returns :meth:`allows_retry`."""
        self._milli_tokens = max(0, self._milli_tokens - 1000)
        return self.allows_retry()

    def record_success(self) -> None:
        """A call succeeded: put back ``token_ratio`` tokens."""
        self._milli_tokens = min(self._max, self._milli_tokens + self._ratio)

    def allows_retry(self) -> bool:
        """Whether a failed call may be retried now (the level is above half the bucket)."""
        return 2 * self._milli_tokens > self._max

    def __repr__(self) -> str:
        return f"<RetryThrottle {self.tokens:g}/{self.settings.max_tokens} tokens>"


@dataclass(frozen=True)
class ClientConfig:
    """A client's configuration: channel-wide settings and a :class:`MethodConfig` per method.

    Build one with :meth:`from_file`, :meth:`from_json` or :meth:`from_dict` (docs/CONFIG.md),
    or directly.

    Attributes:
        load_balancing: ``"pick_first"`` (the default), ``"round_robin"`` or ``"least_loaded"``.
        retry_throttling: a :class:`RetryThrottling`, or ``None``: retries are not throttled.
        connection_backoff: a :class:`ConnectionBackoff` (gRPC's defaults unless set).
        health_check: pick only backends whose health service says SERVING.
        methods: (service, method) -> :class:`MethodConfig`; ``("", "")`` is the default,
            ``(service, "")`` a whole service, ``("", method)`` a flat method name.  Use
            :meth:`method` to look one up.
    """

    load_balancing: str = "pick_first"
    retry_throttling: RetryThrottling | None = None
    connection_backoff: ConnectionBackoff = field(default_factory=ConnectionBackoff)
    health_check: bool = False
    methods: Mapping[tuple[str, str], MethodConfig] = field(default_factory=dict, hash=False)
    _cache: dict[str, MethodConfig] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        policy = self.load_balancing.lower() if isinstance(self.load_balancing, str) else None
        if policy not in LOAD_BALANCING_POLICIES:
            raise ConfigError("load_balancing", f"must be one of {', '.join(LOAD_BALANCING_POLICIES)}, got {self.load_balancing!r}")
        object.__setattr__(self, "load_balancing", policy)
        if self.retry_throttling is not None and not isinstance(self.retry_throttling, RetryThrottling):
            raise ConfigError("retry_throttling", "must be a RetryThrottling or None")
        if not isinstance(self.connection_backoff, ConnectionBackoff):
            raise ConfigError("connection_backoff", "must be a ConnectionBackoff")
        if not isinstance(self.health_check, bool):
            raise ConfigError("health_check", f"must be true or false, got {self.health_check!r}")
        methods = dict(self.methods)
        for key, config in methods.items():
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(part, str) for part in key)):
                raise ConfigError("methods", f"keys are (service, method) pairs of strings, got {key!r}")
            if "/" in key[1]:
                raise ConfigError("methods", f"a method name has no '/', got {key[1]!r}")
            if not isinstance(config, MethodConfig):
                raise ConfigError("methods", f"values are MethodConfig, got {type(config).__name__}")
        object.__setattr__(self, "methods", MappingProxyType(methods))

    def method(self, name: str, path: str | None = None) -> MethodConfig:
        """The configuration of the method with wire name ``name`` (``"kv.Store/get"``,
        ``"greet"``): its own entry, else its service's, else the default, else an empty
        :class:`MethodConfig` (all ``None``).

        ``path``: the path a short ``name`` stands for on the server (the client learns it
        from the server's INFO frame): then the path's entry, else its service's, else the
        short name's own entry (``{"method": "get"}``), else the default.
        """
        if path is not None and path != name:
            service, method = split_method_name(path)
            found = self.methods.get((service, method)) or self.methods.get((service, ""))
            if found is not None:
                return found
        try:
            return self._cache[name]
        except KeyError:
            pass
        service, method = split_method_name(name)
        methods = self.methods
        found = methods.get((service, method))
        if found is None:
            found = methods.get((service, ""))
            if found is None:
                found = methods.get(("", ""), _NO_CONFIG)
        if len(self._cache) < _METHOD_CACHE_LIMIT:
            self._cache[name] = found
        return found

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> "ClientConfig":
        """The configuration a parsed JSON document describes (docs/CONFIG.md).

        Raises:
            ConfigError: (also a ``ValueError``) the first value that breaks a rule, with its
                JSON path (``methodConfig[2].retryPolicy.maxAttempts``).
        """
        values = _members(document, "", _CLIENT_KEYS)
        if "retry_throttling" in values:
            values["retry_throttling"] = _parse_throttling(values["retry_throttling"], "retryThrottling")
        if "connection_backoff" in values:
            values["connection_backoff"] = _parse_backoff(values["connection_backoff"], "connectionBackoff")
        if "methods" in values:
            values["methods"] = _parse_method_configs(values["methods"], "methodConfig")
        if "health_check" in values:
            values["health_check"] = _boolean(values["health_check"], "healthCheck")
        return _build(cls, "", values, _CLIENT_KEYS)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ClientConfig":
        """The configuration in a JSON document.  Raises ConfigError (not JSON, a key twice in
        one object, NaN or Infinity, or anything :meth:`from_dict` refuses)."""
        try:
            document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError("", f"not JSON: {exc}") from None
        return cls.from_dict(document)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "ClientConfig":
        """The configuration in a JSON file (UTF-8).

        Raises:
            OSError: the file cannot be read.
            ConfigError: as :meth:`from_json`.
        """
        with open(path, encoding="utf-8") as file:
            text = file.read()
        return cls.from_json(text)


# ---------------------------------------------------------------------------------------------
# Reading JSON (form checks; ranges are the dataclasses')

#: JSON key -> field, per object.  The order is the documentation's.
_CLIENT_KEYS = {
    "loadBalancingPolicy": "load_balancing",
    "retryThrottling": "retry_throttling",
    "connectionBackoff": "connection_backoff",
    "healthCheck": "health_check",
    "methodConfig": "methods",
}
_METHOD_KEYS = {
    "name": "name",
    "timeout": "timeout",
    "waitForReady": "wait_for_ready",
    "idempotent": "idempotent",
    "maxRequestMessageBytes": "max_request_message_size",
    "maxResponseMessageBytes": "max_response_message_size",
    "retryPolicy": "retry_policy",
    "compression": "compression",
}
_RETRY_KEYS = {
    "maxAttempts": "max_attempts",
    "initialBackoff": "initial_backoff",
    "maxBackoff": "max_backoff",
    "backoffMultiplier": "backoff_multiplier",
    "retryableStatusCodes": "retryable_status_codes",
}
_THROTTLING_KEYS = {"maxTokens": "max_tokens", "tokenRatio": "token_ratio"}
_BACKOFF_KEYS = {
    "baseDelay": "base_delay",
    "multiplier": "multiplier",
    "jitter": "jitter",
    "maxDelay": "max_delay",
    "minConnectTimeout": "min_connect_timeout",
}
_NAME_KEYS = {"service": "service", "method": "method"}

#: gRPC service-config keys trpc does not take: said so, rather than "unknown".
_GRPC_ONLY_KEYS = {"loadBalancingConfig", "healthCheckConfig", "hedgingPolicy", "perAttemptRecvTimeout"}

# A proto3 JSON duration: seconds with up to nine decimals and an "s" (".5s" as gRPC reads it).
_DURATION = re.compile(r"-?(?:\d+(?:\.\d{1,9})?|\.\d{1,9})s")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _members(value: Any, path: str, keys: Mapping[str, str], required: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON object's members as {field: value}; unknown keys are errors, null is absent."""
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a JSON object, got {_json_type(value)}")
    members = {}
    for key, item in value.items():
        if key not in keys:
            if not isinstance(key, str):
                raise ConfigError(path, f"keys must be strings, got {key!r}")
            if key in _GRPC_ONLY_KEYS:
                raise ConfigError(_join(path, key), "is a gRPC setting trpc does not support")
            near = difflib.get_close_matches(key, list(keys), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(keys)})"
            raise ConfigError(_join(path, key), "unknown key" + hint)
        if item is not None:
            members[keys[key]] = item
    for key in required:
        if keys[key] not in members:
            raise ConfigError(_join(path, key), "is required")
    return members


def _build(cls: type[_T], path: str, values: dict[str, Any], keys: Mapping[str, str]) -> _T:
    """``cls(**values)``, with a range error's field turned back into its JSON path."""
    try:
        return cls(**values)
    except ConfigError as exc:
        json_key = {name: key for key, name in keys.items()}.get(exc.path, exc.path)
        raise ConfigError(_join(path, json_key), exc.reason) from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _duration(value: Any, path: str) -> float:
    """Seconds from ``"1.5s"`` or a plain number."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and _DURATION.fullmatch(value):
        return float(value[:-1])
    raise ConfigError(path, f'must be a duration ("1.5s", or a number of seconds), got {_json_type(value)}')


def _number(value: Any, path: str) -> float:
    if not _is_number(value):
        raise ConfigError(path, f"must be a number, got {_json_type(value)}")
    return float(value)


def _integer(value: Any, path: str, *, text: bool = False) -> int:
    """An integer; with ``text``, also its decimal digits as a string (proto3 JSON's int64)."""
    if isinstance(value, float) and value.is_integer():
        raise ConfigError(path, f"must be an integer, got {value!r} (write it without a fraction)")
    if text and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(path, f"must be an integer, got {_json_type(value)}")
    return value


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, got {_json_type(value)}")
    return value


def _status(value: Any, path: str) -> Status:
    """A status from its gRPC name (``"UNAVAILABLE"``) or number (14)."""
    if isinstance(value, str):
        try:
            return Status[value]
        except KeyError:
            hint = f" (names are upper case: {value.upper()!r})" if value.upper() in Status.__members__ else ""
            raise ConfigError(path, f"no status is named {value!r}{hint}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Status(value)
        except ValueError:
            raise ConfigError(path, f"no status has the number {value} (0-16)") from None
    raise ConfigError(path, f"must be a status name or number, got {_json_type(value)}")


def _parse_retry_policy(value: Any, path: str) -> RetryPolicy:
    values = _members(value, path, _RETRY_KEYS, required=_RETRY_KEYS)
    values["max_attempts"] = _integer(values["max_attempts"], _join(path, "maxAttempts"))
    values["initial_backoff"] = _duration(values["initial_backoff"], _join(path, "initialBackoff"))
    values["max_backoff"] = _duration(values["max_backoff"], _join(path, "maxBackoff"))
    values["backoff_multiplier"] = _number(values["backoff_multiplier"], _join(path, "backoffMultiplier"))
    codes = values["retryable_status_codes"]
    codes_path = _join(path, "retryableStatusCodes")
    if not isinstance(codes, list):
        raise ConfigError(codes_path, f"must be a list of status names, got {_json_type(codes)}")
    values["retryable_status_codes"] = [_status(code, f"{codes_path}[{i}]") for i, code in enumerate(codes)]
    return _build(RetryPolicy, path, values, _RETRY_KEYS)


def _parse_method_config(values: dict[str, Any], path: str) -> MethodConfig:
    if "timeout" in values:
        values["timeout"] = _duration(values["timeout"], _join(path, "timeout"))
    for key in ("waitForReady", "idempotent"):
        name = _METHOD_KEYS[key]
        if name in values:
            values[name] = _boolean(values[name], _join(path, key))
    for key in ("maxRequestMessageBytes", "maxResponseMessageBytes"):
        name = _METHOD_KEYS[key]
        if name in values:
            values[name] = _integer(values[name], _join(path, key), text=True)
    if "retry_policy" in values:
        values["retry_policy"] = _parse_retry_policy(values["retry_policy"], _join(path, "retryPolicy"))
    return _build(MethodConfig, path, values, _METHOD_KEYS)


def _describe(key: tuple[str, str]) -> str:
    service, method = key
    if not service:
        return f"method {method!r}" if method else "the default ({})"
    return f"{service}/{method}" if method else f"service {service!r}"


def _parse_method_configs(value: Any, path: str) -> dict[tuple[str, str], MethodConfig]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list of method configs, got {_json_type(value)}")
    methods: dict[tuple[str, str], MethodConfig] = {}
    named_at: dict[tuple[str, str], str] = {}
    for i, entry in enumerate(value):
        entry_path = f"{path}[{i}]"
        values = _members(entry, entry_path, _METHOD_KEYS, required=["name"])
        names = values.pop("name")
        names_path = _join(entry_path, "name")
        if not isinstance(names, list) or not names:
            raise ConfigError(names_path, f"must be a non-empty list of names ([{{}}] for every method), got {_json_type(names)}")
        keys = []
        for j, name in enumerate(names):
            name_path = f"{names_path}[{j}]"
            parts = _members(name, name_path, _NAME_KEYS)
            for part, text in parts.items():
                if not isinstance(text, str):
                    raise ConfigError(_join(name_path, part), f"must be a string, got {_json_type(text)}")
            key = (parts.get("service", ""), parts.get("method", ""))
            if "/" in key[1]:
                raise ConfigError(_join(name_path, "method"), f"a method name has no '/' (the service goes in \"service\"), got {key[1]!r}")
            if key in named_at:
                raise ConfigError(name_path, f"{_describe(key)} is named twice (also at {named_at[key]})")
            named_at[key] = name_path
            keys.append(key)
        config = _parse_method_config(values, entry_path)
        for key in keys:
            methods[key] = config
    return methods


def _parse_throttling(value: Any, path: str) -> RetryThrottling:
    values = _members(value, path, _THROTTLING_KEYS, required=_THROTTLING_KEYS)
    values["max_tokens"] = _integer(values["max_tokens"], _join(path, "maxTokens"))
    values["token_ratio"] = _number(values["token_ratio"], _join(path, "tokenRatio"))
    return _build(RetryThrottling, path, values, _THROTTLING_KEYS)


def _parse_backoff(value: Any, path: str) -> ConnectionBackoff:
    values = _members(value, path, _BACKOFF_KEYS)
    for key in ("baseDelay", "maxDelay", "minConnectTimeout"):
        name = _BACKOFF_KEYS[key]
        if name in values:
            values[name] = _duration(values[name], _join(path, key))
    for key in ("multiplier", "jitter"):
        name = _BACKOFF_KEYS[key]
        if name in values:
            values[name] = _number(values[name], _join(path, key))
    return _build(ConnectionBackoff, path, values, _BACKOFF_KEYS)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = {}
    for key, value in pairs:
        if key in document:
            raise ConfigError("", f"the key {key!r} appears twice in one object")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise ConfigError("", f"{name} is not JSON")
