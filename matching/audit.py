"""Checking the contract's invariants (section 1.6) over what the engine emitted.

Pure: the caller feeds decoded messages in topic order; `AuditReport` says what
is wrong. `matchstream audit` feeds it from Kafka, the tests from their readers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.messages import TERMINAL_STATUSES, PoolConfig

__all__ = ["AuditReport", "Auditor"]

_MAX_EXAMPLES = 5

_Event = tuple[str, str | None, str | None]
"""One `match.status` of a request: status, match_id, at."""


@dataclass
class AuditReport:
    """Counts and violations; `ok` is False when any invariant is broken."""

    requests: int = 0
    terminal: int = 0
    still_active: int = 0
    matches: int = 0
    duplicate_outputs: int = 0
    dlq: int = 0
    database_compared: bool = False
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not self.violations

    def violate(self, rule: str, example: str) -> None:
        self.violations[rule].append(example)

    def render(self) -> str:
        """A plain-text report for operators."""
        lines = [
            f"requests seen        {self.requests}",
            f"ended (terminal)     {self.terminal}",
            f"still active         {self.still_active}",
            f"matches              {self.matches}",
            f"identical re-emits   {self.duplicate_outputs}",
            f"dlq records          {self.dlq}",
        ]
        if self.database_compared:
            lines.append("database             compared (matches, members, terminal statuses)")
        if self.ok:
            lines.append("violations           none")
        for rule, examples in sorted(self.violations.items()):
            lines.append(f"VIOLATION {rule}: {len(examples)}")
            lines.extend(f"  e.g. {example}" for example in examples[:_MAX_EXAMPLES])
        return "\n".join(lines)


class Auditor:
    """Collects inputs and outputs, then checks them.

    Example:
        >>> auditor = Auditor()
        >>> auditor.add_status({"request_id": "r", "pool_id": "p", "user_id": "u",
        ...                     "status": "expired", "match_id": None})
        >>> auditor.report().ok
        True
    """

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str], dict[str, Any]] = {}
        self._configs: dict[str, PoolConfig] = {}
        self._statuses: dict[tuple[str, str], list[_Event]] = defaultdict(list)
        self._matches: dict[str, list[bytes]] = defaultdict(list)
        self._match_bodies: dict[str, dict[str, Any]] = {}
        self._dlq = 0

    def add_request(self, message: Mapping[str, Any]) -> None:
        """A valid `match.request` of type request (the first one per request_id wins)."""
        if message.get("type", "request") == "request":
            self._requests.setdefault((message["pool_id"], message["request_id"]), dict(message))

    def add_command(self, message: Mapping[str, Any]) -> None:
        """A `pool.command`; configure commands tell the rules a match must satisfy."""
        if message.get("command") == "configure" and message.get("config") is not None:
            self._configs[message["pool_id"]] = PoolConfig.model_validate(message["config"])

    def add_status(self, event: Mapping[str, Any]) -> None:
        if event.get("about") is None:
            key = (event["pool_id"], event["request_id"])
            self._statuses[key].append((event["status"], event.get("match_id"), event.get("at")))

    def add_found(self, found: Mapping[str, Any]) -> None:
        body = orjson.dumps(found, option=orjson.OPT_SORT_KEYS)
        self._matches[found["match_id"]].append(body)
        self._match_bodies[found["match_id"]] = dict(found)

    def add_dlq(self) -> None:
        self._dlq += 1

    @property
    def match_ids(self) -> list[str]:
        """Every match_id seen in `match.found`."""
        return list(self._match_bodies)

    @property
    def request_ids(self) -> list[str]:
        """Every request_id seen in `match.status` (refused commands aside)."""
        return list(dict.fromkeys(request_id for _, request_id in self._statuses))

    def compare_database(
        self,
        report: AuditReport,
        *,
        members: Mapping[str, Collection[tuple[str, str]]],
        requests: Mapping[tuple[str, str], tuple[str, str | None]],
    ) -> None:
        """Check what a database sink stored against the topics; violations go to `report`.

        Args:
            report: The report of `report()` to add to.
            members: match_id -> the (request_id, user_id) of each stored member.
            requests: (pool_id, request_id) -> the stored (status, match_id).
        """
        report.database_compared = True
        for match_id, found in self._match_bodies.items():
            stored = members.get(match_id)
            expected = {(member["request_id"], member["user_id"]) for member in found["members"]}
            if stored is None:
                report.violate("match missing in database", match_id)
            elif set(stored) != expected:
                report.violate("database members differ", f"{match_id}: {sorted(stored)}")
        for (pool_id, request_id), history in self._statuses.items():
            end = next((item[:2] for item in history if item[0] in TERMINAL_STATUSES), None)
            if end is None:
                continue  # still active: the database may lag behind, nothing is final yet
            row = requests.get((pool_id, request_id))
            if row is None:
                report.violate("request missing in database", f"{pool_id}/{request_id}")
            elif row != end:
                report.violate(
                    "database status differs",
                    f"{pool_id}/{request_id}: topics {end}, database {row}",
                )

    def report(self) -> AuditReport:
        report = AuditReport(requests=len(self._statuses), dlq=self._dlq)
        self._check_statuses(report)
        self._check_matches(report)
        return report

    def _check_statuses(self, report: AuditReport) -> None:
        for (pool_id, request_id), history in self._statuses.items():
            ended = list(
                dict.fromkeys(item[:2] for item in history if item[0] in TERMINAL_STATUSES)
            )
            # A re-emit is the same event again, `at` included (the relay replays records).
            report.duplicate_outputs += len(history) - len(dict.fromkeys(history))
            if not ended:
                report.still_active += 1
                continue
            report.terminal += 1
            if len(ended) > 1:
                report.violate("two terminal statuses", f"{pool_id}/{request_id}: {ended}")
            first_end = next(i for i, item in enumerate(history) if item[0] in TERMINAL_STATUSES)
            # After a crash or a rebalance the relay replays from its last commit, so an
            # earlier status may come again after the end; only a new one is a violation.
            seen = set(history[: first_end + 1])
            later = [
                item[:2]
                for item in history[first_end:]
                if item not in seen and item[:2] not in ended
            ]
            if later:
                report.violate("status after the end", f"{pool_id}/{request_id}: {later}")

    def _check_matches(self, report: AuditReport) -> None:
        report.matches = len(self._matches)
        match_of_request: dict[tuple[str, str], str] = {}
        for match_id, bodies in self._matches.items():
            if len(set(bodies)) > 1:
                report.violate("match_id re-used with other content", match_id)
            report.duplicate_outputs += len(bodies) - 1
            found = self._match_bodies[match_id]
            pool_id = found["pool_id"]
            members = found["members"]
            if len({member["user_id"] for member in members}) != len(members):
                report.violate("user twice in one match", match_id)
            for member in members:
                key = (pool_id, member["request_id"])
                other = match_of_request.setdefault(key, match_id)
                if other != match_id:
                    report.violate("request in two matches", f"{key[1]}: {other}, {match_id}")
                if ("matched", match_id) not in {item[:2] for item in self._statuses.get(key, [])}:
                    report.violate("member without matched status", f"{key[1]} in {match_id}")
            self._check_rules(report, found)

    def _check_rules(self, report: AuditReport, found: Mapping[str, Any]) -> None:
        config = self._configs.get(found["pool_id"], PoolConfig())
        members = found["members"]
        if config.mode in ("pair", "group") and len(members) != config.members_per_match:
            report.violate(
                "match size", f"{found['match_id']}: {len(members)} != {config.members_per_match}"
            )
        if config.mode not in ("pair", "group"):
            return  # batch pairing ignores `match_on`: everyone waiting is paired
        requests = [self._requests.get((found["pool_id"], m["request_id"])) for m in members]
        if any(request is None for request in requests):
            return  # the inputs were not read (or aged out); only outputs can be checked
        for key in config.match_on:
            values = {
                orjson.dumps(request["criteria"].get(key))
                for request in requests
                if request is not None and request.get("criteria", {}).get(key) is not None
            }
            relaxed = key in config.relax_after_s
            if len(values) > 1 and not relaxed:
                report.violate("criteria disagree", f"{found['match_id']}: {key}")
