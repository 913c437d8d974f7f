"""Who of a batch pool can sit, where the odd one out goes, and which seat everyone takes.

Who is matched. Seats bound how many people can sit: `seats_per_table` rounded down
to even at each table, plus one when `seats_per_table` is odd and at least 3 (one
table then seats a trio). When more attendees wait than that, the first ones in the
caller's order (the engine orders by priority, then arrival) are matched and the
rest end `unseated`, so nobody is matched to a partner who then cannot sit. `tables`
or `seats_per_table` of 0 means the pool has no seat plan: everyone is matched and
nobody gets a seat.

Odd one out. With an odd number matched, the one the matching leaves out joins, as a
third member, the pair whose two scores with them sum highest. If no table can seat
three together, they end `unseated` instead and the pair sits as a pair.

Seating. The trio first (it is the hardest to place), then the pairs in the order of
their earliest member; each group takes the first table with enough free seats, so a
group always shares a table. `table_no` and `seat_no` count from 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from matching.arrays import IntMatrix
from models.messages import PoolConfig

__all__ = ["SeatLayout", "place_odd_one", "seat_groups", "seatable_people"]


def seatable_people(config: PoolConfig) -> int | None:
    tables, seats = config.tables, config.seats_per_table
    if tables == 0 or seats == 0:
        return None
    return tables * (seats - seats % 2) + (1 if seats % 2 and seats >= 3 else 0)


def place_odd_one(
    odd: int, pairs: list[tuple[int, int]], weights: IntMatrix
) -> tuple[tuple[int, int], int]:
    """The pair the odd one out adds most to, and the odd one."""
    gains = [int(weights[odd, left]) + int(weights[odd, right]) for left, right in pairs]
    return pairs[gains.index(max(gains))], odd


@dataclass
class SeatLayout:
    order: list[tuple[int, ...]]
    tables: dict[tuple[int, ...], int]
    seats: dict[int, tuple[int, int]]
    unseated: list[int]


def seat_groups(
    pairs: list[tuple[int, ...]], trio: tuple[tuple[int, int], int] | None, config: PoolConfig
) -> SeatLayout:
    groups = sorted(pairs, key=min)
    unseated: list[int] = []
    if trio is not None:
        pair, odd = trio
        groups.remove(pair)
        groups.insert(0, (*pair, odd))
    if seatable_people(config) is None:
        return SeatLayout(groups, {}, {}, unseated)
    free = [config.seats_per_table] * config.tables
    layout = SeatLayout([], {}, {}, unseated)
    for group in groups:
        table = next((table for table, left in enumerate(free) if left >= len(group)), None)
        if table is None and len(group) == 3:
            # No table seats three together: the pair sits, the odd one does not.
            unseated.append(group[2])
            group = group[:2]
            table = next((table for table, left in enumerate(free) if left >= 2), None)
        if table is None:
            unseated.extend(group)
            continue
        for member in group:
            layout.seats[member] = (table + 1, config.seats_per_table - free[table] + 1)
            free[table] -= 1
        layout.order.append(group)
        layout.tables[group] = table + 1
    return layout
