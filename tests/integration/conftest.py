"""Integration fixtures: every test leaves no session behind (admission counts live sessions and their load)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.client import Client


@pytest.fixture(autouse=True)
async def close_leftover_clients() -> AsyncIterator[None]:
    yield
    await Client.close_all()
