"""A generated workload: match requests over many pools, with cancels, duplicates
and malformed messages, for the demo, the bench and the integration tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from models.codec import dumps, utc_now_iso

__all__ = ["Workload", "WorkloadMessage"]

_DIFFICULTIES = ("Easy", "Medium", "Hard")
_TOPICS = ("arrays", "graphs", "dp", "strings")
_INTERESTS = ("rust", "python", "hiking", "chess", "jazz", "ml", "cooking", "climbing")


@dataclass(frozen=True)
class WorkloadMessage:
    """One message to produce; `kind` says what it is for the caller's bookkeeping."""

    topic_kind: str  # "request" or "command"
    key: bytes
    value: bytes
    kind: str  # "request", "cancel", "duplicate", "malformed", "configure"


@dataclass(frozen=True, kw_only=True)
class Workload:
    """N requests over P pools, reproducible from `seed`.

    Example:
        >>> messages = list(Workload(requests=10, pools=2, seed=1).messages())
        >>> sum(m.kind == "request" for m in messages)
        10
    """

    requests: int
    pools: int
    seed: int = 0
    cancel_ratio: float = 0.05
    duplicate_ratio: float = 0.05
    malformed: int = 0
    users_per_pool: int = 0
    """0 means one user per request (no supersedes)."""
    ttl_s: float = 600.0
    run_id: str = "w"

    def pool_id(self, index: int) -> str:
        return f"{self.run_id}-pool-{index}"

    def configure_commands(self) -> Iterator[WorkloadMessage]:
        """Half the pools match on difficulty and topic; a few form groups of 3."""
        for index in range(self.pools):
            pool_id = self.pool_id(index)
            config: dict[str, object] = {"mode": "pair", "request_ttl_s": self.ttl_s}
            if index % 2 == 0:
                config["match_on"] = ["difficulty", "topic"]
            if index % 5 == 4:
                config.update(mode="group", group_size=3)
            command = {"command": "configure", "pool_id": pool_id, "config": config}
            yield WorkloadMessage("command", pool_id.encode(), dumps(command), "configure")

    def messages(self) -> Iterator[WorkloadMessage]:
        """Configure commands first, then requests interleaved with the rest."""
        rng = random.Random(self.seed)
        yield from self.configure_commands()
        malformed_at = set(rng.sample(range(self.requests), min(self.malformed, self.requests)))
        sent: list[tuple[str, dict[str, object]]] = []
        for number in range(self.requests):
            pool_id = self.pool_id(rng.randrange(self.pools))
            user = number if self.users_per_pool == 0 else rng.randrange(self.users_per_pool)
            request = {
                "type": "request",
                "request_id": f"{self.run_id}-r-{number}",
                "pool_id": pool_id,
                "user_id": f"{self.run_id}-u-{user}",
                "criteria": {"difficulty": rng.choice(_DIFFICULTIES), "topic": rng.choice(_TOPICS)},
                "profile": {"interests": rng.sample(_INTERESTS, 3)},
                "priority": rng.randrange(4),
                "ttl_s": self.ttl_s,
                "created_at": utc_now_iso(),
            }
            yield WorkloadMessage("request", pool_id.encode(), dumps(request), "request")
            sent.append((pool_id, request))
            if number in malformed_at:
                yield WorkloadMessage("request", pool_id.encode(), _malformed(rng), "malformed")
            if rng.random() < self.duplicate_ratio:
                yield WorkloadMessage("request", pool_id.encode(), dumps(request), "duplicate")
            if rng.random() < self.cancel_ratio and sent:
                target_pool, target = rng.choice(sent)
                cancel = {
                    "type": "cancel",
                    "request_id": target["request_id"],
                    "pool_id": target_pool,
                    "user_id": target["user_id"],
                }
                yield WorkloadMessage("request", target_pool.encode(), dumps(cancel), "cancel")


def _malformed(rng: random.Random) -> bytes:
    choices = [
        b"{not json",
        b"[1, 2, 3]",
        b'{"type": "request", "pool_id": "p"}',
        b'{"request_id": "x", "pool_id": "p", "user_id": "u", "priority": 9}',
        b'{"request_id": 5, "pool_id": {}, "user_id": "u"}',
        b"\xff\xfe\x00binary",
        b"",
    ]
    return rng.choice(choices)
