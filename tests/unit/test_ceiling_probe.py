"""The ceiling probe's app: one agent per design, and a clear error for an unknown one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.ceiling_probe import DESIGNS, create_probe
from streams.eager_handover import EagerWaitFirst
from streams.settings import Settings


@pytest.mark.parametrize("design", DESIGNS)
def test_each_design_is_one_agent_on_the_input_topic(tmp_path: Path, design: str) -> None:
    app = create_probe(
        Settings(data_dir=tmp_path),
        design=design,
        input_topic="in",
        state_topic="state",
        output_topic="out",
    )

    [agent] = app.agents.values()
    assert agent.concurrency == 1
    assert agent.channel.get_topic_name() == "in"
    # The probe hands fetched messages over as the worker does.
    consumer: Any = app.consumer
    assert isinstance(consumer.wait_first, EagerWaitFirst)
    # Building the consumer made its thread's event loop.
    consumer._thread.thread_loop.close()


def test_an_unknown_design_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown design 'grouped'"):
        create_probe(
            Settings(data_dir=tmp_path),
            design="grouped",
            input_topic="in",
            state_topic="state",
            output_topic="out",
        )
