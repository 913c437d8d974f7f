"""Incremental fetch sessions (Kafka's KIP-227) for the worker's input consumer.

aiokafka sends every fetch as a full one: the request names each partition the
consumer reads (49 for the worker's input with 8 per topic), and the broker's reply
names each of them again, most with nothing new. Encoding the one and decoding the
other costs about 0.5 ms of Python per fetch, where a reply with one partition
decodes in 13 us. Paced input is fetched a few messages at a time, so this was a
fifth of the worker's CPU at half its saturating rate (docs/performance.md,
"Fetch sessions").

With a session the broker keeps the partitions and their fetch offsets between
requests. After the first (full) request of a session, a request names only the
partitions added or moved since the last one and lists the ones dropped, and the
reply names only the partitions with records or with new ends.

The bookkeeping follows the protocol's rules:
- the first request of a session has epoch 0 and names every partition; the reply
  gives the session's id (0 when the broker keeps no session, and then every
  request stays a full one);
- each later request carries the next epoch, and the session then holds exactly
  the partitions aiokafka asked for (a partition with records still buffered, or
  paused, is dropped and added back later);
- a request that failed or was cancelled leaves the broker's state unknown, and an
  error for the session itself means it is gone: the next request starts a new one.

The fetcher still sees a request with all of its partitions (`topics`), so it maps
every partition of a reply to the offset it asked for, as without sessions.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka.protocol.fetch import FetchRequest

__all__ = ["FetchSession", "SessionFetchRequest", "install", "use_sessions"]

log = logging.getLogger(__name__)

_NO_SESSION = 0
_NEW_SESSION_EPOCH = 0
_LAST_EPOCH = 2**31 - 1
_SESSIONS_FROM_VERSION = 7
_NO_ERROR = 0

Partition = tuple[str, int]
FetchPosition = tuple[int, int]
"""The fetch offset and the byte limit the session holds for a partition."""


def _by_topic(partitions: Iterable[tuple[str, Any]]) -> list[tuple[str, list[Any]]]:
    grouped: defaultdict[str, list[Any]] = defaultdict(list)
    for topic, item in partitions:
        grouped[topic].append(item)
    return list(grouped.items())


class SessionFetchRequest(FetchRequest):
    """A fetch request sent within a session: encodes only what the broker does not hold.

    Args:
        full: the fetcher's request, naming every partition it fetches.
        session_id: the session the request belongs to (0 with epoch 0: a new one).
        epoch: the request's place in the session.
        held: what the broker holds for the session before this request.
    """

    def __init__(
        self,
        full: FetchRequest,
        *,
        session_id: int,
        epoch: int,
        held: dict[Partition, FetchPosition],
    ) -> None:
        self.wanted: dict[Partition, FetchPosition] = {
            (topic, partition): (offset, max_bytes)
            for topic, partitions in full.topics
            for partition, offset, max_bytes in partitions
        }
        self.session_id = session_id
        self.epoch = epoch
        if epoch == _NEW_SESSION_EPOCH:
            changed, forgotten = list(full.topics), []
        else:
            changed = _by_topic(
                (topic, (partition, *position))
                for (topic, partition), position in self.wanted.items()
                if held.get((topic, partition)) != position
            )
            forgotten = _by_topic(part for part in held if part not in self.wanted)
        self.forgotten = forgotten
        self.in_session = False
        """Whether the request went out within the session (a broker too old for them: no)."""
        super().__init__(
            full._max_wait_ms,
            full._min_bytes,
            full._max_bytes,
            full._isolation_level,
            changed,
            rack_id=full._rack_id,
        )
        self._all_topics = full.topics

    @property
    def topics(self) -> list[tuple[str, list[tuple[int, int, int]]]]:
        """Every partition fetched, as the fetcher asked: the reply may name any of them."""
        return self._all_topics

    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class.API_VERSION < _SESSIONS_FROM_VERSION:
            self._topics = self._all_topics
            return super().build(request_struct_class)
        request = super().build(request_struct_class)
        request.session_id = self.session_id
        request.session_epoch = self.epoch
        request.forgotten_topics_data = self.forgotten
        self.in_session = True
        return request


class FetchSession:
    """What the broker holds for one node's fetch session, after the last answered request.

    Attributes:
        session_id: the broker's id for the session (0: none yet).
        epoch: the epoch of the next request (0: it starts a new session).
        held: the partitions in the session, with their fetch offsets and byte limits.
        incremental: requests sent within an established session.
        restarted: sessions dropped after an error or an unanswered request.
    """

    def __init__(self) -> None:
        self.session_id = _NO_SESSION
        self.epoch = _NEW_SESSION_EPOCH
        self.held: dict[Partition, FetchPosition] = {}
        self.incremental = 0
        self.restarted = 0

    def request(self, full: FetchRequest) -> SessionFetchRequest:
        """The next request of the session for the partitions `full` asks for."""
        if self.epoch != _NEW_SESSION_EPOCH:
            self.incremental += 1
        return SessionFetchRequest(
            full, session_id=self.session_id, epoch=self.epoch, held=self.held
        )

    def answered(self, request: SessionFetchRequest, response: Any) -> None:
        """Take in the broker's reply to `request`, the last request sent."""
        if not request.in_session:
            return
        if response.error_code != _NO_ERROR:
            log.info(
                "fetch session %d ended by the broker (error %d): starting a new one",
                self.session_id,
                response.error_code,
            )
            self.restart()
            return
        if request.epoch == _NEW_SESSION_EPOCH:
            self.session_id = response.session_id
            self.epoch = _NEW_SESSION_EPOCH if self.session_id == _NO_SESSION else 1
            if self.session_id != _NO_SESSION:
                log.info(
                    "fetch session %d started partitions=%d", self.session_id, len(request.wanted)
                )
        else:
            self.epoch = 1 if self.epoch == _LAST_EPOCH else self.epoch + 1
        self.held = request.wanted

    def restart(self) -> None:
        """Forget the session: the next request starts a new one with every partition."""
        if self.session_id != _NO_SESSION or self.held:
            self.restarted += 1
        self.session_id = _NO_SESSION
        self.epoch = _NEW_SESSION_EPOCH
        self.held = {}


Send = Callable[..., Awaitable[Any]]


def use_sessions(send: Send, sessions: dict[int, FetchSession]) -> Send:
    """`send` (an aiokafka client's) with its fetch requests sent in per-node sessions.

    aiokafka sends at most one fetch at a time to a node, so each session's requests
    and replies come in order.
    """

    async def send_in_session(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        if type(request) is not FetchRequest:
            return await send(node_id, request, *args, **kwargs)
        session = sessions.setdefault(node_id, FetchSession())
        in_session = session.request(request)
        try:
            response = await send(node_id, in_session, *args, **kwargs)
        except BaseException:
            session.restart()  # the broker may or may not have taken the request
            raise
        session.answered(in_session, response)
        return response

    return send_in_session


def install(consumer: Any) -> dict[int, FetchSession]:
    """Send the fetches of Faust's aiokafka consumer (made when its thread starts) in sessions.

    Returns the sessions by node id, filled as the consumer fetches.
    """
    sessions: dict[int, FetchSession] = {}
    thread = consumer._thread
    create_consumer = thread._create_consumer

    def create_consumer_with_sessions(*args: Any, **kwargs: Any) -> Any:
        kafka_consumer = create_consumer(*args, **kwargs)
        client = kafka_consumer._client
        client.send = use_sessions(client.send, sessions)
        return kafka_consumer

    thread._create_consumer = create_consumer_with_sessions
    return sessions
