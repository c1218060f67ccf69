"""Workers: video work on lower-priority threads, audio at the process's priority (audio first, down to the OS)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from mirage_ray.config import MirageSettings
from mirage_ray.stages import Workers


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
async def test_video_threads_run_at_lower_priority_than_audio_and_the_loop() -> None:
    base = _own_nice()
    workers = Workers.from_settings(MirageSettings(video_thread_nice=5, video_threads=2))
    try:
        video = {await workers.video(_own_nice) for _ in range(4)}
        audio = await workers.audio(_own_nice)
    finally:
        workers.shutdown()
    assert video == {min(base + 5, 19)}
    assert audio == base == _own_nice()  # the event loop's thread is untouched


async def test_nice_zero_leaves_the_video_threads_alone() -> None:
    base = _own_nice()
    workers = Workers(1, 1, video_nice=0)
    try:
        assert await workers.video(_own_nice) == base
    finally:
        workers.shutdown()


def test_nice_is_a_bounded_setting() -> None:
    with pytest.raises(ValueError, match="less than or equal to 19"):
        MirageSettings(video_thread_nice=20)
