"""The stage reporter's pieces that need no GPU: requests in flight, and the no-GPU answers."""

from __future__ import annotations

import asyncio

from actors.metrics_sink import gpu_memory_fraction, in_flight, requests_in_flight


class Stage:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    @in_flight
    async def run(self, item: int) -> int:
        await self.release.wait()
        if item < 0:
            raise ValueError(item)
        return item


class Plain:
    async def run(self, item: int) -> int:
        return item


async def test_requests_in_flight_count_running_and_waiting_calls() -> None:
    stage = Stage()
    assert requests_in_flight(stage) == 0
    calls = [asyncio.create_task(stage.run(i)) for i in (1, 2, -1)]
    await asyncio.sleep(0.01)
    assert requests_in_flight(stage) == 3
    stage.release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:2] == [1, 2] and isinstance(results[2], ValueError)
    assert requests_in_flight(stage) == 0  # a failed call leaves too
    assert requests_in_flight(Plain()) is None


def test_no_gpu_no_memory_figure() -> None:
    assert gpu_memory_fraction() is None
