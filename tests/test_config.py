"""The client config (docs/CONFIG.md): parsing, validation with JSON paths, lookup, and the
backoff and throttle arithmetic, against gRPC's rules."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from fractions import Fraction
from random import Random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trpc
from trpc import ClientConfig, ConfigError, ConnectionBackoff, MethodConfig, RetryPolicy, RetryThrottling, Status
from trpc import _config
from trpc._config import Backoff, RetryThrottle, split_method_name

pure = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

EXAMPLE = {
    "loadBalancingPolicy": "round_robin",
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    "connectionBackoff": {"baseDelay": "1s", "multiplier": 1.6, "jitter": 0.2, "maxDelay": "120s",
                          "minConnectTimeout": "20s"},
    "healthCheck": True,
    "methodConfig": [
        {"name": [{}], "timeout": "5s"},
        {"name": [{"service": "kv.Store"}], "waitForReady": True},
        {"name": [{"service": "kv.Store", "method": "get"}, {"method": "greet"}],
         "timeout": "0.5s", "idempotent": True, "maxRequestMessageBytes": 1048576,
         "maxResponseMessageBytes": 4194304,
         "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
                         "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}},
    ],
}

RETRY = {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
         "retryableStatusCodes": ["UNAVAILABLE"]}


def with_method(**fields):
    """A document with one method config for every method."""
    return {"methodConfig": [{"name": [{}], **fields}]}


def with_retry(**fields):
    return with_method(retryPolicy={**RETRY, **fields})


def refused(document) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        ClientConfig.from_dict(document)
    return info.value


# ------------------------------------------------------------------------------ parsing


def test_the_example_document_sets_every_field():
    config = ClientConfig.from_json(json.dumps(EXAMPLE))
    assert config.load_balancing == "round_robin"
    assert config.retry_throttling == RetryThrottling(max_tokens=10, token_ratio=0.1)
    assert config.connection_backoff == ConnectionBackoff(1.0, 1.6, 0.2, 120.0, 20.0)
    assert config.health_check is True
    assert config.method("kv.Store/get") == MethodConfig(
        timeout=0.5, wait_for_ready=None, idempotent=True,
        retry_policy=RetryPolicy(4, 0.1, 1.0, 2.0, frozenset({Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED})),
        max_request_message_size=1048576, max_response_message_size=4194304,
    )
    assert config.method("greet") is config.method("kv.Store/get")
    assert config.method("kv.Store/put") == MethodConfig(wait_for_ready=True)
    assert config.method("echo") == MethodConfig(timeout=5.0)


def test_an_empty_document_gives_the_defaults():
    config = ClientConfig.from_dict({})
    assert config == ClientConfig()
    assert (config.load_balancing, config.retry_throttling, config.health_check) == ("pick_first", None, False)
    assert config.connection_backoff == ConnectionBackoff()
    assert config.method("anything") == MethodConfig()


def test_null_is_the_same_as_leaving_a_key_out():
    config = ClientConfig.from_dict({"retryThrottling": None, "methodConfig": [
        {"name": [{"service": None, "method": "greet"}], "timeout": None, "retryPolicy": None}]})
    assert config.retry_throttling is None
    assert config.method("greet") == MethodConfig()
    assert ("", "greet") in config.methods


def test_the_balancing_policy_is_read_without_regard_to_case():
    assert ClientConfig.from_dict({"loadBalancingPolicy": "Least_Loaded"}).load_balancing == "least_loaded"


def test_connection_backoff_keys_left_out_keep_grpcs_defaults():
    backoff = ClientConfig.from_dict({"connectionBackoff": {"maxDelay": 30}}).connection_backoff
    assert backoff == ConnectionBackoff(max_delay=30.0)
    # gRPC's defaults, but for the minimum connect timeout: the client's connect_timeout.
    assert ConnectionBackoff() == ConnectionBackoff(base_delay=1.0, multiplier=1.6, jitter=0.2, max_delay=120.0,
                                                    min_connect_timeout=None)


@pytest.mark.parametrize(("text", "seconds"), [
    ("5s", 5.0), ("1.5s", 1.5), (".25s", 0.25), ("0.000000001s", 1e-9), ("120.000000000s", 120.0),
    (2, 2.0), (0.5, 0.5),
])
def test_durations_are_grpcs_json_form_or_plain_seconds(text, seconds):
    assert ClientConfig.from_dict(with_method(timeout=text)).method("m").timeout == seconds


@pytest.mark.parametrize("text", ["5", "1.5 s", "1.5ms", "1m", "1.0000000001s", "s", ".s", "", "1e3s", True, [1], {}])
def test_durations_in_other_forms_are_refused(text):
    error = refused(with_method(timeout=text))
    assert error.path == "methodConfig[0].timeout" and "duration" in error.reason


@pytest.mark.parametrize("text", ["0s", 0, "-1s", -0.5, 1e400])
def test_a_timeout_must_be_above_zero_and_finite(text):
    assert refused(with_method(timeout=text)).path == "methodConfig[0].timeout"


def test_status_codes_are_read_by_name_or_number():
    codes = ClientConfig.from_dict(with_retry(retryableStatusCodes=["UNAVAILABLE", 8, 14])).method("m")
    assert codes.retry_policy.retryable_status_codes == {Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED}


def test_message_sizes_may_be_strings_of_digits_as_proto3_json_writes_int64():
    config = ClientConfig.from_dict(with_method(maxRequestMessageBytes="1024", maxResponseMessageBytes=0))
    assert (config.method("m").max_request_message_size, config.method("m").max_response_message_size) == (1024, 0)


def test_max_attempts_above_five_are_lowered_to_five_as_grpc_does():
    assert ClientConfig.from_dict(with_retry(maxAttempts=9)).method("m").retry_policy.max_attempts == 5
    assert RetryPolicy(100, 1, 1, 1, {Status.UNAVAILABLE}).max_attempts == 5
    assert ClientConfig.from_dict(with_retry(maxAttempts=2)).method("m").retry_policy.max_attempts == 2


def test_token_ratio_keeps_three_decimal_places_cut_not_rounded():
    config = ClientConfig.from_dict({"retryThrottling": {"maxTokens": 3, "tokenRatio": 0.1239}})
    assert config.retry_throttling.token_ratio == 0.123
    assert config.retry_throttling.milli_token_ratio == 123
    assert RetryThrottling(token_ratio=2).milli_token_ratio == 2000


# --------------------------------------------------------------------------- validation

BAD = [
    # (document, path, a fragment of the reason)
    ([], "", "JSON object"),
    ({"loadBalancingPolicy": "random"}, "loadBalancingPolicy", "pick_first"),
    ({"loadBalancingPolicy": 3}, "loadBalancingPolicy", "must be one of"),
    ({"healthCheck": "yes"}, "healthCheck", "true or false"),
    ({"retryThrottling": {"maxTokens": 10}}, "retryThrottling.tokenRatio", "required"),
    ({"retryThrottling": {"tokenRatio": 0.1}}, "retryThrottling.maxTokens", "required"),
    ({"retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}, "retryThrottling.maxTokens", "[1, 1000]"),
    ({"retryThrottling": {"maxTokens": 1001, "tokenRatio": 0.1}}, "retryThrottling.maxTokens", "[1, 1000]"),
    ({"retryThrottling": {"maxTokens": 10.0, "tokenRatio": 0.1}}, "retryThrottling.maxTokens", "integer"),
    ({"retryThrottling": {"maxTokens": 10, "tokenRatio": 0}}, "retryThrottling.tokenRatio", "0.001"),
    ({"retryThrottling": {"maxTokens": 10, "tokenRatio": -1}}, "retryThrottling.tokenRatio", "0.001"),
    ({"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.0009}}, "retryThrottling.tokenRatio", "0.001"),
    ({"retryThrottling": {"maxTokens": 10, "tokenRatio": "0.1"}}, "retryThrottling.tokenRatio", "number"),
    ({"retryThrottling": [10, 0.1]}, "retryThrottling", "JSON object"),
    ({"connectionBackoff": {"baseDelay": "0s"}}, "connectionBackoff.baseDelay", "greater than 0"),
    ({"connectionBackoff": {"multiplier": 0.5}}, "connectionBackoff.multiplier", "at least 1"),
    ({"connectionBackoff": {"jitter": 1}}, "connectionBackoff.jitter", "[0, 1)"),
    ({"connectionBackoff": {"jitter": -0.1}}, "connectionBackoff.jitter", "[0, 1)"),
    ({"connectionBackoff": {"maxDelay": "0.5s"}}, "connectionBackoff.maxDelay", "base delay"),
    ({"connectionBackoff": {"minConnectTimeout": 0}}, "connectionBackoff.minConnectTimeout", "greater than 0"),
    ({"connectionBackoff": {"maxDelay": "forever"}}, "connectionBackoff.maxDelay", "duration"),
    ({"methodConfig": {}}, "methodConfig", "list"),
    ({"methodConfig": [3]}, "methodConfig[0]", "JSON object"),
    ({"methodConfig": [{"timeout": "1s"}]}, "methodConfig[0].name", "required"),
    ({"methodConfig": [{"name": []}]}, "methodConfig[0].name", "non-empty list"),
    ({"methodConfig": [{"name": {}}]}, "methodConfig[0].name", "non-empty list"),
    ({"methodConfig": [{"name": ["greet"]}]}, "methodConfig[0].name[0]", "JSON object"),
    ({"methodConfig": [{"name": [{"services": "kv"}]}]}, "methodConfig[0].name[0].services", "did you mean 'service'"),
    ({"methodConfig": [{"name": [{"service": 3}]}]}, "methodConfig[0].name[0].service", "string"),
    ({"methodConfig": [{"name": [{"method": "kv.Store/get"}]}]}, "methodConfig[0].name[0].method", "'/'"),
    ({"methodConfig": [{"name": [{}]}, {"name": [{"service": ""}]}]}, "methodConfig[1].name[0]",
     "named twice (also at methodConfig[0].name[0])"),
    ({"methodConfig": [{"name": [{"service": "s", "method": "m"}, {"service": "s", "method": "m"}]}]},
     "methodConfig[0].name[1]", "s/m is named twice"),
    ({"methodConfig": [{"name": [{"method": "greet"}]}, {"name": [{"service": "", "method": "greet"}]}]},
     "methodConfig[1].name[0]", "'greet' is named twice"),
    (with_method(timeuot="1s"), "methodConfig[0].timeuot", "did you mean 'timeout'"),
    (with_method(hedgingPolicy={}), "methodConfig[0].hedgingPolicy", "does not support"),
    ({"loadBalancingConfig": []}, "loadBalancingConfig", "does not support"),
    ({"zzz": 1}, "zzz", "known: loadBalancingPolicy"),
    (with_method(waitForReady="true"), "methodConfig[0].waitForReady", "true or false"),
    (with_method(idempotent=1), "methodConfig[0].idempotent", "true or false"),
    (with_method(maxRequestMessageBytes=-1), "methodConfig[0].maxRequestMessageBytes", "at least 0"),
    (with_method(maxResponseMessageBytes="-1"), "methodConfig[0].maxResponseMessageBytes", "at least 0"),
    (with_method(maxResponseMessageBytes=1024.0), "methodConfig[0].maxResponseMessageBytes", "without a fraction"),
    (with_method(maxResponseMessageBytes="1 KiB"), "methodConfig[0].maxResponseMessageBytes", "integer"),
    (with_method(retryPolicy=True), "methodConfig[0].retryPolicy", "JSON object"),
    (with_retry(maxAttempts=1), "methodConfig[0].retryPolicy.maxAttempts", "at least 2"),
    (with_retry(maxAttempts=2.5), "methodConfig[0].retryPolicy.maxAttempts", "integer"),
    (with_retry(maxAttempts="3"), "methodConfig[0].retryPolicy.maxAttempts", "integer"),
    (with_retry(maxAttempts=None), "methodConfig[0].retryPolicy.maxAttempts", "required"),
    (with_retry(initialBackoff="0s"), "methodConfig[0].retryPolicy.initialBackoff", "greater than 0"),
    (with_retry(maxBackoff=0), "methodConfig[0].retryPolicy.maxBackoff", "greater than 0"),
    (with_retry(backoffMultiplier=0), "methodConfig[0].retryPolicy.backoffMultiplier", "greater than 0"),
    (with_retry(backoffMultiplier=-2), "methodConfig[0].retryPolicy.backoffMultiplier", "greater than 0"),
    (with_retry(backoffMultiplier="2"), "methodConfig[0].retryPolicy.backoffMultiplier", "number"),
    (with_retry(retryableStatusCodes=[]), "methodConfig[0].retryPolicy.retryableStatusCodes", "at least one"),
    (with_retry(retryableStatusCodes="UNAVAILABLE"), "methodConfig[0].retryPolicy.retryableStatusCodes", "list"),
    (with_retry(retryableStatusCodes=["UNAVAILABLE", "unavailable"]),
     "methodConfig[0].retryPolicy.retryableStatusCodes[1]", "upper case: 'UNAVAILABLE'"),
    (with_retry(retryableStatusCodes=["BUSY"]), "methodConfig[0].retryPolicy.retryableStatusCodes[0]", "no status"),
    (with_retry(retryableStatusCodes=[17]), "methodConfig[0].retryPolicy.retryableStatusCodes[0]", "0-16"),
    (with_retry(retryableStatusCodes=[True]), "methodConfig[0].retryPolicy.retryableStatusCodes[0]", "name or number"),
    (with_retry(retryableStatusCodes=["OK"]), "methodConfig[0].retryPolicy.retryableStatusCodes", "OK is not a failure"),
    (with_retry(perAttemptRecvTimeout="1s"), "methodConfig[0].retryPolicy.perAttemptRecvTimeout", "does not support"),
]


@pytest.mark.parametrize(("document", "path", "reason"), BAD, ids=[f"{path or 'config'}:{reason}" for _, path, reason in BAD])
def test_each_broken_rule_is_refused_naming_its_json_path(document, path, reason):
    error = refused(document)
    assert error.path == path
    assert reason in error.reason
    assert str(error) == f"{path or 'config'}: {error.reason}"


def test_a_config_error_is_a_value_error_and_a_trpc_error():
    error = refused({"zzz": 1})
    assert isinstance(error, ValueError) and isinstance(error, trpc.TrpcError)


@pytest.mark.parametrize(("text", "reason"), [
    ("{", "not JSON"),
    ('{"healthCheck": true} x', "not JSON"),
    ('{"healthCheck": true, "healthCheck": false}', "'healthCheck' appears twice"),
    ('{"methodConfig": [{"name": [{}], "timeout": NaN}]}', "NaN is not JSON"),
    ('{"connectionBackoff": {"maxDelay": Infinity}}', "Infinity is not JSON"),
])
def test_json_that_is_broken_or_ambiguous_is_refused(text, reason):
    with pytest.raises(ConfigError, match="^config: ") as info:
        ClientConfig.from_json(text)
    assert reason in info.value.reason


def test_from_file_reads_utf8_json(tmp_path):
    path = tmp_path / "client.json"
    path.write_text(json.dumps(EXAMPLE), encoding="utf-8")
    assert ClientConfig.from_file(path) == ClientConfig.from_dict(EXAMPLE)
    assert ClientConfig.from_file(str(path)) == ClientConfig.from_json(path.read_bytes())
    with pytest.raises(OSError):
        ClientConfig.from_file(tmp_path / "missing.json")


def test_settings_built_in_python_are_checked_by_the_same_rules():
    with pytest.raises(ConfigError, match="^max_attempts: must be at least 2"):
        RetryPolicy(1, 0.1, 1, 2, {Status.UNAVAILABLE})
    with pytest.raises(ConfigError, match="^retryable_status_codes: "):
        RetryPolicy(2, 0.1, 1, 2, {99})
    with pytest.raises(ConfigError, match="^timeout: "):
        MethodConfig(timeout=0)
    with pytest.raises(ConfigError, match="^wait_for_ready: "):
        MethodConfig(wait_for_ready="yes")
    with pytest.raises(ConfigError, match="^jitter: "):
        ConnectionBackoff(jitter=1.5)
    with pytest.raises(ConfigError, match="^max_tokens: "):
        RetryThrottling(max_tokens=True)
    with pytest.raises(ConfigError, match="^methods: "):
        ClientConfig(methods={"greet": MethodConfig()})
    with pytest.raises(ConfigError, match="^methods: "):
        ClientConfig(methods={("kv", "a/b"): MethodConfig()})
    with pytest.raises(ConfigError, match="^methods: "):
        ClientConfig(methods={("kv", "get"): {"timeout": 1}})
    assert RetryPolicy(2, 0.1, 1, 2, [14]).retryable_status_codes == frozenset({Status.UNAVAILABLE})


def test_configs_are_frozen_hashable_and_compare_by_value():
    config = ClientConfig.from_dict(EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.health_check = False
    with pytest.raises(TypeError):
        config.methods[("", "x")] = MethodConfig()
    assert config == ClientConfig.from_dict(EXAMPLE) and hash(config) == hash(ClientConfig.from_dict(EXAMPLE))
    assert config != ClientConfig.from_dict({**EXAMPLE, "methodConfig": []})
    config.method("greet")
    assert config == ClientConfig.from_dict(EXAMPLE)  # the lookup cache is not part of the value


# ------------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(("name", "parts"), [
    ("greet", ("", "greet")), ("kv.Store/get", ("kv.Store", "get")), ("a/b/c", ("a/b", "c")), ("/x", ("", "x")),
])
def test_wire_names_split_at_the_last_slash(name, parts):
    assert split_method_name(name) == parts


def lookup_config() -> ClientConfig:
    def entry(names, timeout):
        return {"name": names, "timeout": timeout}
    return ClientConfig.from_dict({"methodConfig": [
        entry([{}], 1),
        entry([{"service": "kv.Store"}], 2),
        entry([{"service": "kv.Store", "method": "get"}], 3),
        entry([{"method": "greet"}], 4),
        entry([{"service": "a/b", "method": "c"}], 5),
    ]})


@pytest.mark.parametrize(("name", "timeout"), [
    ("kv.Store/get", 3), ("kv.Store/put", 2), ("kv.Other/get", 1), ("greet", 4), ("echo", 1),
    ("kv.Store/greet", 2), ("a/b/c", 5), ("a/b/d", 1), ("b/c", 1), ("kv.Store", 1),
])
def test_the_most_specific_entry_answers(name, timeout):
    assert lookup_config().method(name).timeout == timeout


def test_the_most_specific_entry_wins_whole_without_merging_fields():
    config = ClientConfig.from_dict({"methodConfig": [
        {"name": [{}], "timeout": "5s", "waitForReady": True},
        {"name": [{"service": "kv"}], "retryPolicy": RETRY, "idempotent": True},
        {"name": [{"service": "kv", "method": "get"}], "maxResponseMessageBytes": 2048},
    ]})
    assert config.method("kv/get") == MethodConfig(max_response_message_size=2048)
    assert config.method("kv/put").timeout is None and config.method("kv/put").idempotent is True


def test_without_a_default_entry_other_methods_get_an_empty_config():
    config = ClientConfig.from_dict({"methodConfig": [{"name": [{"service": "kv"}], "timeout": 1}]})
    assert config.method("greet") == MethodConfig()
    assert config.method("kv/x").timeout == 1


def test_repeated_lookups_are_answered_from_the_cache_which_is_bounded(monkeypatch):
    config = lookup_config()
    first = config.method("kv.Store/get")
    assert config.method("kv.Store/get") is first and config._cache["kv.Store/get"] is first
    monkeypatch.setattr(_config, "_METHOD_CACHE_LIMIT", 8)
    for i in range(20):
        assert config.method(f"kv.Store/m{i}").timeout == 2
        assert config.method(f"m{i}").timeout == 1
    assert len(config._cache) == 8


# --------------------------------------------------------------------- retry delays


def test_retry_delays_follow_grpcs_retry_design_for_a_seeded_random():
    policy = RetryPolicy(5, initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=3,
                         retryable_status_codes={Status.UNAVAILABLE})
    random, reference = Random(7), Random(7)
    for attempt, ceiling in [(1, 0.1), (2, 0.1 * 3), (3, 0.1 * 9), (4, 1.0), (5, 1.0)]:
        assert policy.delay(attempt, random) == reference.uniform(0, ceiling)


def test_retry_numbers_start_at_one_and_huge_ones_do_not_overflow():
    policy = RetryPolicy(2, 0.1, 2.0, 10.0, {Status.UNAVAILABLE})
    with pytest.raises(ValueError):
        policy.delay(0, Random(1))
    assert 0 <= policy.delay(10_000, Random(1)) <= 2.0


@pure
@given(
    initial=st.floats(1e-3, 10), maximum=st.floats(1e-3, 100), multiplier=st.floats(0.1, 10),
    attempt=st.integers(1, 2000), seed=st.integers(0, 2**32),
)
def test_a_retry_delay_is_between_zero_and_its_ceiling(initial, maximum, multiplier, attempt, seed):
    policy = RetryPolicy(2, initial, maximum, multiplier, {Status.UNAVAILABLE})
    try:
        ceiling = min(initial * multiplier ** (attempt - 1), maximum)
    except OverflowError:
        ceiling = maximum
    assert 0 <= policy.delay(attempt, Random(seed)) <= ceiling


# ------------------------------------------------------------------ connection backoff


def reference_backoff(policy: ConnectionBackoff, random: Random, count: int) -> list[float]:
    """connection-backoff.md's pseudocode, written out on its own."""
    current = policy.base_delay
    delays = [current]
    while len(delays) < count:
        current = min(current * policy.multiplier, policy.max_delay)
        delays.append(current + random.uniform(-policy.jitter * current, policy.jitter * current))
    return delays


@pytest.mark.parametrize("policy", [
    ConnectionBackoff(), ConnectionBackoff(base_delay=0.05, multiplier=2, jitter=0.5, max_delay=3),
])
def test_backoff_gives_the_connection_backoff_sequence_exactly_for_a_seeded_random(policy):
    backoff = Backoff(policy, Random(1234))
    assert [backoff.next_delay() for _ in range(40)] == reference_backoff(policy, Random(1234), 40)


def test_without_jitter_the_backoff_grows_by_the_multiplier_up_to_the_cap():
    backoff = Backoff(ConnectionBackoff(jitter=0), Random(0))
    delays = [backoff.next_delay() for _ in range(16)]
    assert delays[:4] == [1.0, 1.6, 1.6 * 1.6, 1.6 * 1.6 * 1.6]
    assert delays[10] == 1.6 ** 10 and delays[11:] == [120.0] * 5  # 1.6 ** 11 would be 176
    assert all(a <= b for a, b in zip(delays, delays[1:]))


def test_once_capped_every_delay_is_within_the_jitter_of_max_delay():
    backoff = Backoff(random=Random(99))
    delays = [backoff.next_delay() for _ in range(200)][20:]
    assert all(120 * 0.8 <= delay <= 120 * 1.2 for delay in delays)
    assert min(delays) < 100 and max(delays) > 140  # the jitter really spreads them


def test_reset_starts_the_sequence_again():
    policy = ConnectionBackoff()
    backoff, reference = Backoff(policy, Random(5)), Random(5)
    first = [backoff.next_delay() for _ in range(6)]
    backoff.reset()
    again = [backoff.next_delay() for _ in range(6)]
    assert first == reference_backoff(policy, reference, 6)
    assert again == reference_backoff(policy, reference, 6)  # from base_delay, the jitter drawn afresh
    assert again[0] == 1.0 and again[1:] != first[1:]


def test_an_attempt_gets_at_least_the_minimum_connect_timeout():
    policy = ConnectionBackoff(min_connect_timeout=20)
    assert policy.attempt_timeout(1.0, 10) == 20.0 and policy.attempt_timeout(96.5, 10) == 96.5
    # Unset, the minimum is the client's connect_timeout.
    assert ConnectionBackoff().attempt_timeout(1.0, 10) == 10 and ConnectionBackoff().attempt_timeout(12, 10) == 12


@pure
@given(
    base=st.floats(0.001, 10), multiplier=st.floats(1, 5), jitter=st.floats(0, 0.99),
    extra=st.floats(0, 100), seed=st.integers(0, 2**32), count=st.integers(1, 60),
)
def test_every_delay_lies_within_the_jitter_of_a_capped_growing_backoff(base, multiplier, jitter, extra, seed, count):
    policy = ConnectionBackoff(base_delay=base, multiplier=multiplier, jitter=jitter, max_delay=base + extra)
    backoff = Backoff(policy, Random(seed))
    current = None
    for _ in range(count):
        delay = backoff.next_delay()
        current = base if current is None else min(current * multiplier, policy.max_delay)
        assert current * (1 - jitter) - 1e-9 <= delay <= current * (1 + jitter) + 1e-9
        assert delay > 0


# ---------------------------------------------------------------------- retry throttle


def test_the_throttle_starts_full_and_stops_retries_at_half():
    throttle = RetryThrottle(RetryThrottling(max_tokens=10, token_ratio=0.1))
    assert throttle.tokens == 10 and throttle.allows_retry()
    assert [throttle.record_failure() for _ in range(5)] == [True, True, True, True, False]
    assert throttle.tokens == 5 and not throttle.allows_retry()  # 5 is not above 10 / 2
    throttle.record_success()
    assert throttle.tokens == 5.1 and throttle.allows_retry()


def test_the_throttle_counts_in_exact_thousandths():
    throttle = RetryThrottle(RetryThrottling(max_tokens=10, token_ratio=0.1))
    for _ in range(7):
        throttle.record_failure()
    for _ in range(3):
        throttle.record_success()
    assert throttle.tokens == 3.3  # 3 + 0.1 + 0.1 + 0.1 in floats is 3.3000000000000003
    assert throttle._milli_tokens == 3300


def test_the_throttle_level_stays_between_zero_and_max_tokens():
    throttle = RetryThrottle(RetryThrottling(max_tokens=2, token_ratio=0.75))
    for _ in range(5):
        throttle.record_failure()
    assert throttle.tokens == 0
    for _ in range(5):
        throttle.record_success()
    assert throttle.tokens == 2
    assert RetryThrottle().settings == RetryThrottling(10, 0.1)


@pure
@given(
    max_tokens=st.integers(1, 1000), ratio=st.integers(1, 5000), outcomes=st.lists(st.booleans(), max_size=300),
)
def test_the_throttle_matches_exact_decimal_arithmetic(max_tokens, ratio, outcomes):
    throttle = RetryThrottle(RetryThrottling(max_tokens, ratio / 1000))
    level = Fraction(max_tokens)
    for success in outcomes:
        if success:
            throttle.record_success()
            level = min(Fraction(max_tokens), level + Fraction(ratio, 1000))
        else:
            throttle.record_failure()
            level = max(Fraction(0), level - 1)
        assert 0 <= throttle.tokens <= max_tokens
        assert Fraction(throttle._milli_tokens, 1000) == level and throttle.tokens == float(level)
        assert throttle.allows_retry() == (level > Fraction(max_tokens, 2))


@pure
@given(max_tokens=st.integers(1, 1000), calls=st.integers(1, 3000), max_attempts=st.integers(2, 5))
def test_when_every_attempt_fails_retries_are_bounded_by_half_the_bucket(max_tokens, calls, max_attempts):
    throttle = RetryThrottle(RetryThrottling(max_tokens, 0.1))
    attempts = []
    for _ in range(calls):
        made = 1
        while throttle.record_failure() and made < max_attempts:  # each attempt fails retryably
            made += 1
        attempts.append(made)
    retries = sum(attempts) - calls
    # The j-th failure may be followed by a retry only while max_tokens - j > max_tokens / 2,
    # however many calls there are: gRPC's bound on the extra load when a server is down.
    assert retries <= math.ceil(max_tokens / 2) - 1
    assert retries == retries_model(max_tokens, calls, max_attempts)
    throttled = [i for i, made in enumerate(attempts) if made < max_attempts]
    if throttled:  # from the first throttled call on, every call makes one attempt
        assert all(made == 1 for made in attempts[throttled[0] + 1:])


def retries_model(max_tokens: int, calls: int, max_attempts: int) -> int:
    """Retries when every attempt fails, counted in whole tokens."""
    failures = retries = 0
    for _ in range(calls):
        for attempt in range(1, max_attempts + 1):
            failures += 1
            if attempt == max_attempts or not 2 * max(0, max_tokens - failures) > max_tokens:
                break
            retries += 1
    return retries


# ------------------------------------------------------------------- generated configs

names = st.tuples(st.sampled_from(["", "kv.Store", "a.B", "x/y"]), st.sampled_from(["", "get", "greet", "put"]))
durations = st.one_of(
    st.floats(0.001, 1e6), st.integers(1, 10**6),
    st.decimals("0.001", "100000", places=3).map(lambda d: f"{d}s"),
)
statuses = st.lists(st.sampled_from([s for s in Status if s is not Status.OK]).flatmap(
    lambda s: st.sampled_from([s.name, int(s)])), min_size=1, max_size=5)
retry_policies = st.fixed_dictionaries({
    "maxAttempts": st.integers(2, 50), "initialBackoff": durations, "maxBackoff": durations,
    "backoffMultiplier": st.floats(0.01, 100), "retryableStatusCodes": statuses,
})
method_fields = st.fixed_dictionaries({}, optional={
    "timeout": durations, "waitForReady": st.booleans(), "idempotent": st.booleans(),
    "maxRequestMessageBytes": st.integers(0, 2**40) | st.integers(0, 2**40).map(str),
    "maxResponseMessageBytes": st.integers(0, 2**40), "retryPolicy": retry_policies | st.none(),
})


@st.composite
def documents(draw):
    keys = draw(st.lists(names, unique=True, max_size=8))
    entries = []
    while keys:
        count = draw(st.integers(1, len(keys)))
        named, keys = keys[:count], keys[count:]
        entry = {"name": [{"service": s, "method": m} for s, m in named]}
        entries.append({**entry, **draw(method_fields)})
    document = draw(st.fixed_dictionaries({}, optional={
        "loadBalancingPolicy": st.sampled_from(["pick_first", "round_robin", "least_loaded", "ROUND_ROBIN"]),
        "retryThrottling": st.fixed_dictionaries({"maxTokens": st.integers(1, 1000), "tokenRatio": st.floats(0.001, 1000)}),
        "connectionBackoff": st.fixed_dictionaries({}, optional={
            "baseDelay": st.just("0.5s"), "multiplier": st.floats(1, 10), "jitter": st.floats(0, 0.999),
            "maxDelay": st.floats(1, 1e4), "minConnectTimeout": durations,
        }),
        "healthCheck": st.booleans(),
    }))
    document["methodConfig"] = entries
    return document


@pure
@given(documents())
def test_any_valid_document_is_accepted_and_every_name_finds_its_entry(document):
    config = ClientConfig.from_json(json.dumps(document))
    assert config == ClientConfig.from_dict(document)
    for entry in document["methodConfig"]:
        for name in entry["name"]:
            service, method = name["service"], name["method"]
            wire = f"{service}/{method}" if service else method
            found = config.method(wire)
            assert found is config.methods[(service, method)]
            if "timeout" in entry:
                assert found.timeout == pytest.approx(_config._duration(entry["timeout"], ""))
            assert found.wait_for_ready == entry.get("waitForReady")


def test_the_example_in_docs_config_md_parses_as_its_text_says():
    text = (Path(__file__).parent.parent / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    example = text.split("## Example", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    config = ClientConfig.from_json(example)
    assert config == ClientConfig.from_dict({**EXAMPLE, "healthCheck": False})
    assert config.method("kv.Store/put") == MethodConfig(wait_for_ready=True)
