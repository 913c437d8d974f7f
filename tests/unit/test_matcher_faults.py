"""`apply_input`: bad input is refused, and an engine fault refuses the input and reloads the engine."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from agents.matcher import apply_input
from matching.engine import Effects, MatchEngine
from models.codec import decode, dumps
from models.messages import MatchRequest
from tests.unit.test_engine import POOL, Harness


def _event(raw: bytes) -> Any:
    return SimpleNamespace(
        value=raw, message=SimpleNamespace(topic="match.request", partition=0, offset=41)
    )


def _request(request_id: str, user_id: str) -> bytes:
    return dumps(MatchRequest(request_id=request_id, pool_id=POOL, user_id=user_id))


def _on_request(engine: MatchEngine, raw: bytes | None, partition: int, now: float) -> Effects:
    return engine.handle_request(decode(MatchRequest, raw), partition=partition, now=now)


def test_an_engine_fault_refuses_the_input_and_undoes_its_half_applied_change() -> None:
    harness = Harness()
    harness.ask("r-1", "u-1", now=1.0, ttl_s=60.0)
    reloads: list[float] = []

    def reload_engine() -> None:
        reloads.append(1.0)
        harness.engine.load(harness.table.values())

    def faulty(engine: MatchEngine, raw: bytes | None, partition: int, now: float) -> Effects:
        # The engine takes the request into its books, then fails before any write.
        _on_request(engine, raw, partition, now)
        raise ZeroDivisionError("a bug in a rule")

    effects, refusal = apply_input(
        faulty, harness.engine, _event(_request("r-2", "u-2")), 2.0, reload_engine
    )

    assert effects.writes == [] and effects.notices == []
    assert refusal == "internal error: ZeroDivisionError('a bug in a rule')"
    assert reloads == [1.0]
    # The engine agrees with the table again: r-2 (which had taken r-1 as its
    # partner) never reached it, and r-1 waits.
    assert harness.waiting() == {"r-1"}
    assert harness.status("r-1") == "queued"


def test_bad_input_is_refused_without_a_reload() -> None:
    harness = Harness()

    def reload_engine() -> None:
        raise AssertionError("bad input must not reload the engine")

    effects, refusal = apply_input(
        _on_request, harness.engine, _event(b"{not json"), 1.0, reload_engine
    )

    assert effects.writes == []
    assert refusal is not None and "internal error" not in refusal


def test_good_input_passes_through() -> None:
    harness = Harness()
    effects, refusal = apply_input(
        _on_request, harness.engine, _event(_request("r-1", "u-1")), 1.0, lambda: None
    )
    assert refusal is None
    assert [key for key, _ in effects.writes]
