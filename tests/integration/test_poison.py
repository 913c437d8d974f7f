"""Poison input: hostile messages on every input topic end in the DLQ, the worker keeps going.

Hypothesis draws the messages: bytes that are not JSON or not UTF-8, JSON that is
not an object, objects with wrong types, control characters and NUL bytes in
identifiers, strings just under and over the 1 MB limit, nesting deeper than the
parser allows, empty values and tombstones, and valid messages keyed to the wrong
partition. Each message's fate is predicted with the product's own codec and
models; every message predicted to be refused must appear in `match.dlq` (by its
topic, partition and offset) with a reason, no other may, and afterwards the worker
still matches a fresh pair of requests.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import BaseModel

from models.codec import MAX_MESSAGE_BYTES, DecodeError, decode
from models.messages import MatchConfirm, MatchRequest, PoolCommand, ProfileUpdate
from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from streams.worker_process import WorkerProcess
from tests.support.drill import group_topics, poll_until, read_topic
from tests.support.harness import OutputReader, send_messages
from web.live import partition_of

pytestmark = pytest.mark.integration

EXAMPLES = 80
"""Hostile messages of every shape, per input topic."""
OBJECTS = 80
"""And as many JSON objects with the model's fields and wrong or hostile values."""
HOME = "poison-home"
"""A pool configured first; misrouted messages name it with another pool's key."""
CANARY = "poison-canary"

_MODELS: dict[str, type[BaseModel]] = {
    "request": MatchRequest,
    "confirm": MatchConfirm,
    "command": PoolCommand,
    "profile": ProfileUpdate,
}
_NASTY_TEXT = [
    "'; DROP TABLE requests; --",
    "<script>alert(1)</script>",
    "../../../etc/passwd",
    "${jndi:ldap://example.invalid/a}",
    "%s%s%s%n",
    "\u202egnp.exe",
    "\x00",
    "a\x00b",
    "\x1b[31mred",
    "\ud800",
    "",
    " ",
]


@dataclass(frozen=True)
class Hostile:
    kind: str  # request, confirm, command, profile
    key: bytes | None
    value: bytes | None
    shape: str  # what the generator meant to send, for the report


# -- strategies -----------------------------------------------------------------------------

_text = st.one_of(st.text(max_size=40), st.sampled_from(_NASTY_TEXT))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_ids = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=12),
    st.sampled_from(_NASTY_TEXT),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.builds(lambda n: "x" * n, st.integers(min_value=190, max_value=5_000)),
)
_FIELDS: dict[str, dict[str, st.SearchStrategy[object]]] = {
    "request": {
        "type": st.sampled_from(["request", "cancel", "join", 1, None]),
        "request_id": _ids,
        "pool_id": _ids,
        "user_id": _ids,
        "criteria": st.one_of(_json, st.dictionaries(_text, _scalars, max_size=40)),
        "profile": st.one_of(
            _json,
            st.fixed_dictionaries(
                {},
                optional={
                    "interests": st.lists(_text, max_size=300),
                    "embedding": st.lists(st.floats(), max_size=20) | _json,
                    "attributes": _json,
                },
            ),
        ),
        "priority": st.one_of(st.integers(-5, 10), _json),
        "ttl_s": st.one_of(st.floats(), st.integers(-1, 10**9), _json),
        "created_at": st.one_of(_text, st.sampled_from(["2026-11-23T10:00:00Z", "yesterday"])),
    },
    "confirm": {
        "match_id": _ids,
        "pool_id": _ids,
        "user_id": _ids,
        "accept": st.one_of(st.booleans(), _json),
    },
    "command": {
        "command": st.one_of(
            st.sampled_from(["pause", "resume", "close", "explode", "configure", "clear"]), _json
        ),
        "pool_id": _ids,
        "config": st.one_of(
            _json,
            st.fixed_dictionaries(
                {},
                optional={
                    "mode": st.sampled_from(["pair", "group", "recommend", "batch", "x"]),
                    "group_size": st.integers(-1, 10**6),
                    "top_k": st.integers(-1, 10**6),
                    "tables": st.integers(-1, 10**9),
                    "seats_per_table": st.integers(-1, 10**9),
                    "chaos": st.floats(-1, 100) | _json,
                    "weights": st.dictionaries(_text, st.floats(), max_size=20),
                    "match_on": st.lists(_text, max_size=40) | _json,
                },
            ),
        ),
    },
    "profile": {
        "user_id": _ids,
        "profile": st.one_of(_json, st.fixed_dictionaries({}, optional={"interests": _json})),
        "updated_at": st.one_of(_text, st.sampled_from(["2026-11-23T10:05:00Z", "0"])),
    },
}


def _objects(kind: str) -> st.SearchStrategy[bytes]:
    """JSON objects with the model's field names, some missing, values often wrong."""
    fields = _FIELDS[kind]
    return st.fixed_dictionaries({}, optional=fields).map(_dump)  # type: ignore[arg-type]


def _dump(value: object) -> bytes:
    """JSON bytes even for what orjson refuses (lone surrogates, integers past 64 bits)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _near_limit(kind: str) -> st.SearchStrategy[bytes]:
    """An otherwise plausible message padded to just under or just over the size limit."""

    def build(over: bool, where: str) -> bytes:
        body: dict[str, object] = {"request_id": "r", "pool_id": HOME, "user_id": "u"}
        body["match_id"] = "m"
        body.update({"command": "pause", "accept": True, "profile": {}})
        size = MAX_MESSAGE_BYTES + (100 if over else -300)
        padding = "x" * (size - len(orjson.dumps(body)) - len(where) - 6)
        return orjson.dumps({**body, where: padding})

    return st.builds(build, st.booleans(), st.sampled_from(["user_id", "note", "criteria"]))


def _deep() -> st.SearchStrategy[bytes]:
    """Nesting around the parser's depth limit, in an ignored field or a criterion."""

    def build(depth: int, where: str) -> bytes:
        nested = b"[" * depth + b"]" * depth
        return b'{"request_id":"r","pool_id":"p","user_id":"u","%s":%s}' % (
            where.encode(),
            nested if where == "note" else b'{"k":' + nested + b"}",
        )

    return st.builds(build, st.integers(200, 3_000), st.sampled_from(["note", "criteria"]))


def _payloads(kind: str) -> st.SearchStrategy[tuple[bytes | None, str]]:
    return st.one_of(
        st.binary(max_size=300).map(lambda b: (b, "bytes")),
        st.binary(max_size=100).map(lambda b: (b"\xff\xfe" + b, "not utf-8")),
        _text.map(lambda t: ("{" + t).encode("utf-8", "surrogatepass")).map(lambda b: (b, "bad")),
        _json.filter(lambda v: not isinstance(v, dict)).map(lambda v: (_dump(v), "not an object")),
        _objects(kind).map(lambda b: (b, "object")),
        _near_limit(kind).map(lambda b: (b, "near 1 MB")),
        _deep().map(lambda b: (b, "deep")),
        st.sampled_from([(b"", "empty"), (None, "tombstone"), (b"null", "null")]),
    )


def _always() -> list[tuple[bytes | None, str]]:
    """Shapes every run must include, whatever hypothesis happens to draw."""
    pad = b'{"request_id":"r","pool_id":"p","user_id":"u","note":"%s"}'
    return [
        (pad % (b"x" * (MAX_MESSAGE_BYTES - 100)), "near 1 MB"),
        (pad % (b"x" * (MAX_MESSAGE_BYTES + 10)), "near 1 MB"),
        (b"[" * 1_100 + b"]" * 1_100, "deep"),
        (b'{"request_id":"r","pool_id":"p","user_id":"u","criteria":{"k":%s}}'
         % (b"[" * 300 + b"]" * 300), "deep"),
        (b"", "empty"),
        (None, "tombstone"),
        (b"null", "null"),
        (b"\xff\xfe\x00binary", "not utf-8"),
        (b'{"request_id":"r\\u0000","pool_id":"p\\u0000","user_id":"\\u0007"}', "control chars"),
        (b'{"request_id":"\xed\xa0\x80","pool_id":"p","user_id":"u"}', "not utf-8"),
    ]  # fmt: skip


def _valid_but_hostile(kind: str) -> list[tuple[bytes, str]]:
    """Valid messages whose content is hostile: they must be processed, not refused."""
    bodies: dict[str, dict[str, object]] = {
        "request": {
            "request_id": "'; DROP TABLE requests; --",
            "pool_id": "<script>alert(1)</script>",
            "user_id": "../../etc/passwd",
            "criteria": {"k": "a\x00b", "x" * 200: "y" * 10_000},
            "profile": {"interests": ["\u202egnp.exe"] * 256, "embedding": [1e308] * 64},
        },
        "confirm": {"match_id": "%s%s%n", "pool_id": "${jndi:x}", "user_id": "u", "accept": True},
        "command": {
            "command": "configure",
            "pool_id": "${jndi:x}",
            "config": {"mode": "group", "group_size": 64, "match_on": ["k"] * 32, "top_k": 100},
        },
        "profile": {"user_id": "'; DROP TABLE requests; --", "profile": {"facts": ["x" * 2000]}},
    }
    return [(orjson.dumps(bodies[kind]), "valid, hostile content")]


_keys = st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=20).map(str.encode))


def _draw(
    payloads: st.SearchStrategy[tuple[bytes | None, str]], count: int
) -> list[tuple[bytes | None, bytes | None, str]]:
    """`count` (key, value, shape) examples drawn by hypothesis, reproducibly."""
    drawn: list[tuple[bytes | None, bytes | None, str]] = []

    @hypothesis_settings(
        max_examples=count,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(key=_keys, payload=payloads)
    def collect(key: bytes | None, payload: tuple[bytes | None, str]) -> None:
        value, shape = payload
        # Kafka has no message without both; a tombstone keeps at least an empty key.
        drawn.append((b"" if key is None and value is None else key, value, shape))

    collect()
    return drawn


# -- the test -------------------------------------------------------------------------------


def _refused(kind: str, key: bytes | None, value: bytes | None) -> bool:
    """Whether the worker must refuse this (pool messages are sent to their pool's partition)."""
    try:
        decoded = decode(_MODELS[kind], value)
    except DecodeError:
        return True
    if kind == "profile":
        # agents/profiles.py: newest-wins needs every update of a user on one partition.
        return key != decoded.user_id.encode()  # type: ignore[attr-defined]
    return False


def _misrouted(names: TopicNames, partitions: int, rng: random.Random) -> list[Hostile]:
    """Valid messages for HOME keyed by pools that live on other partitions."""
    home = partition_of(HOME, partitions)
    keys = [f"elsewhere-{n}" for n in range(200)]
    keys = [k for k in keys if partition_of(k, partitions) != home][:10]
    messages = []
    for number, key in enumerate(keys):
        request = {"request_id": f"mis-{number}", "pool_id": HOME, "user_id": f"u{number}"}
        confirm = {"match_id": "m-x", "pool_id": HOME, "user_id": "u", "accept": True}
        command = {"command": rng.choice(["pause", "close", "clear"]), "pool_id": HOME}
        for kind, body in (("request", request), ("confirm", confirm), ("command", command)):
            messages.append(Hostile(kind, key.encode(), orjson.dumps(body), "misrouted"))
    return messages


async def _send(
    settings: Settings, names: TopicNames, hostile: list[Hostile]
) -> dict[tuple[str, int, int], Hostile]:
    """Produce each message; valid pool messages go to their pool's partition."""
    topics = {
        "request": names.request,
        "confirm": names.confirm,
        "command": names.command,
        "profile": names.profile,
    }
    where: dict[tuple[str, int, int], Hostile] = {}
    producer = AIOKafkaProducer(
        bootstrap_servers=",".join(settings.broker_hosts),
        acks="all",
        max_request_size=2 * MAX_MESSAGE_BYTES,
    )
    await producer.start()
    try:
        pending = []
        for message in hostile:
            partition = _partition(message, settings.topic_partitions)
            future = await producer.send(
                topics[message.kind], message.value, key=message.key, partition=partition
            )
            pending.append((message, future))
        for message, future in pending:
            meta = await future
            where[(meta.topic, meta.partition, meta.offset)] = message
    finally:
        await producer.stop()
    return where


def _partition(message: Hostile, partitions: int) -> int:
    if message.shape == "misrouted":
        assert message.key is not None
        return partition_of(message.key.decode(), partitions)
    try:
        decoded = decode(_MODELS[message.kind], message.value)
    except DecodeError:
        return random.Random(message.value).randrange(partitions)
    if message.kind == "profile":
        return partition_of(decoded.user_id, partitions)  # type: ignore[attr-defined]
    # A valid pool message creates its pool where it lands; keep that where the key says.
    return partition_of(decoded.pool_id, partitions)  # type: ignore[attr-defined]


async def test_hostile_input_on_every_topic_ends_in_the_dlq(
    settings: Settings,
    worker_factory: Callable[..., WorkerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    rng = random.Random(6)
    hostile: list[Hostile] = []
    for kind in _MODELS:
        objects = _objects(kind).map(lambda b: (b, "object"))
        for key, value, shape in _draw(_payloads(kind), EXAMPLES) + _draw(objects, OBJECTS):
            hostile.append(Hostile(kind, key, value, shape))
        hostile += [Hostile(kind, b"poison", value, shape) for value, shape in _always()]
        user = b"'; DROP TABLE requests; --"  # profile updates are keyed by their user
        hostile += [
            Hostile(kind, user if kind == "profile" else None, value, shape)
            for value, shape in _valid_but_hostile(kind)
        ]
    hostile += _misrouted(names, settings.topic_partitions, rng)
    # Valid messages the generator happened to build for the test's own pools would
    # steer them; HOME and CANARY belong to the test.
    hostile = [h for h in hostile if not _names_own_pool(h)]

    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    configure = {"command": "configure", "pool_id": HOME, "config": {"mode": "pair"}}
    await send_messages(settings, [(names.command, HOME.encode(), orjson.dumps(configure))])
    await wait_until_consumed(settings, names.command, timeout_s=60)

    sent = await _send(settings, names, hostile)
    consumed = await group_topics(settings, settings.app_id, timeout_s=60)
    judged = {
        where: message
        for where, message in sent.items()
        if message.kind != "profile" or names.profile in consumed
    }
    expected = {
        where
        for where, m in judged.items()
        if m.shape == "misrouted" or _refused(m.kind, m.key, m.value)
    }

    dlq: dict[tuple[str, int, int], dict[str, object]] = {}

    async def refreshed() -> bool:
        dlq.clear()
        for record in await read_topic(settings, names.dlq):
            body = orjson.loads(record.value)
            dlq[(body["topic"], body["partition"], body["offset"])] = body
        return expected <= set(dlq)

    await poll_until(
        refreshed,
        timeout_s=120,
        every_s=1.0,
        what="a DLQ record for every refused message",
        details=lambda: _describe(expected - set(dlq), sent),
    )

    # The worker still matches: two requests in a fresh pool become a match.
    async with OutputReader(settings) as reader:
        await send_messages(
            settings,
            [(names.request, CANARY.encode(), orjson.dumps(_canary(side))) for side in ("a", "b")],
        )
        await reader.wait_for(
            lambda out: any(f["pool_id"] == CANARY for f in out.found),
            timeout_s=60,
            what="a match in the canary pool after the hostile stream",
        )
    await refreshed()

    unexpected = {where: dlq[where] for where in set(dlq) - expected if where in judged}
    assert not unexpected, f"accepted messages in the DLQ: {list(unexpected.values())[:3]}"
    assert all(dlq[where]["error"] for where in expected)
    assert worker.running
    assert "Crashed" not in worker.log_text()
    if names.profile not in consumed:
        # Nobody reads profile-update yet: nothing of it may have reached the DLQ.
        assert not any(topic == names.profile for topic, _, _ in dlq)
    shapes = Counter(f"{m.kind}/{m.shape}" for w, m in judged.items() if w in expected)
    with capsys.disabled():
        print(
            f"\nDRILL poison messages={len(sent)} refused={len(expected)} "
            f"accepted={len(judged) - len(expected)} "
            f"profile_update_consumed={names.profile in consumed} "
            f"shapes={dict(sorted(shapes.items()))}"
        )


def _names_own_pool(message: Hostile) -> bool:
    if message.shape == "misrouted":
        return False
    try:
        decoded = decode(_MODELS[message.kind], message.value)
    except DecodeError:
        return False
    return getattr(decoded, "pool_id", None) in (HOME, CANARY)


def _canary(side: str) -> dict[str, str]:
    return {"request_id": f"canary-{side}", "pool_id": CANARY, "user_id": f"canary-{side}"}


def _describe(missing: set[tuple[str, int, int]], sent: dict[tuple[str, int, int], Hostile]) -> str:
    lines = [f"{len(missing)} missing, e.g."]
    for where in sorted(missing)[:5]:
        message = sent[where]
        value = None if message.value is None else message.value[:200]
        lines.append(f"{where} {message.kind}/{message.shape}: {value!r}")
    return "\n".join(lines)
