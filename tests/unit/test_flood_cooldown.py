"""The reconnecting flooder (issue 10): after a session is closed 4029 for flooding, its client address and its
token subject are refused with 4029 for ``flood_cooldown_s`` (a reason with the retry time); others are not.

Without the cooldown a flooder that reconnects after each 4029 gets a fresh message allowance every time
(docs/security.md, "Floods"). The limiter is tested with an injected clock; the front door in-process.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from mirage_ray import protocol
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import CloseCode
from mirage_ray.security import ConnectionLimiter, Cooldowns
from tests import hostile

COOLDOWN_S = 30.0
RETRY = re.compile(r"retry in (\d+) s")


def limiter(cooldown_s: float = COOLDOWN_S, max_keys: int = 100) -> ConnectionLimiter:
    return ConnectionLimiter(1000.0, 1000, 1000.0, 1000, 100, max_keys=max_keys, flood_cooldown_s=cooldown_s)


def test_a_flood_cools_down_its_address_and_its_subject_and_nobody_else() -> None:
    limits = limiter()
    limits.flooded("203.0.113.5", "mallory", now=100.0)
    by_address = limits.check_address("203.0.113.5", 100.5)
    by_subject = limits.check_subject("mallory", 100.5)
    assert by_address == by_subject == "rate limited after flooding: retry in 30 s"
    assert limits.check("198.51.100.1", "alice", 100.5) is None  # another address with another token
    assert limits.check("198.51.100.1", "mallory", 110.0) == "rate limited after flooding: retry in 20 s"
    assert limits.check("203.0.113.5", "alice", 129.2) == "rate limited after flooding: retry in 1 s"
    assert limits.check("203.0.113.5", "mallory", 130.0) is None  # the cooldown is over


def test_a_refused_attempt_does_not_extend_the_cooldown() -> None:
    limits = limiter()
    limits.flooded("203.0.113.5", "mallory", now=0.0)
    for t in range(1, 30):
        assert limits.check("203.0.113.5", "mallory", float(t)) is not None
    assert limits.check("203.0.113.5", "mallory", 30.0) is None


def test_no_cooldown_when_set_to_zero() -> None:
    limits = limiter(cooldown_s=0.0)
    limits.flooded("203.0.113.5", "mallory", now=0.0)
    assert limits.check("203.0.113.5", "mallory", 0.0) is None


def test_cooldowns_are_bounded_and_forget_the_oldest() -> None:
    cooldowns = Cooldowns(60.0, max_keys=3)
    for i in range(5):
        cooldowns.start(f"address:10.0.0.{i}", now=float(i))
    assert len(cooldowns) == 3
    assert cooldowns.remaining("address:10.0.0.0", 5.0) == 0.0  # forgotten: spraying keys cannot grow memory
    assert cooldowns.remaining("address:10.0.0.4", 5.0) == pytest.approx(59.0)


def test_the_setting_has_a_range() -> None:
    assert MirageSettings().flood_cooldown_s == COOLDOWN_S
    for bad in (-1.0, 3601.0):
        with pytest.raises(ValueError, match="flood_cooldown_s"):
            MirageSettings(flood_cooldown_s=bad)


# --- through the front door (in-process app, TestClient) ------------------------------------------------------------
FLOOD_LIMITS: dict[str, Any] = {"max_messages_per_s": 1.0, "message_burst": 5, "flood_cooldown_s": COOLDOWN_S}
END_WAIT_S = 10.0


def first_message(client: TestClient, subject: str) -> dict[str, Any]:
    with hostile.connect(client, hostile.token(subject)) as ws:
        return hostile.receive(ws)


def wait_until_no_session(client: TestClient) -> None:
    """The flooder's session has ended on the server (its limiter saw the 4029 before the session left stats)."""
    deadline = time.monotonic() + END_WAIT_S
    while client.get("/v1/stats").json()["sessions"] > 0:
        assert time.monotonic() < deadline, "the flooding session never ended"
        time.sleep(0.02)


def flood(client: TestClient, subject: str) -> int | None:
    """Open a session and send pings past the message burst; the close code it got."""
    with hostile.connect(client, hostile.token(subject)) as ws:
        assert json.loads(hostile.receive(ws)["text"])["type"] == "hello"
        for i in range(20):
            ws.send_text(protocol.dumps({"type": "ping", "t": i}))
        return hostile.probe(ws, "after-flood")


def test_a_flooder_that_reconnects_is_refused_and_others_are_served() -> None:
    app = hostile.make_app(hostile.no_models(), **FLOOD_LIMITS)
    flooder_address, other_address = ("203.0.113.5", 1), ("198.51.100.1", 1)
    with TestClient(app, client=flooder_address) as flooder, TestClient(app, client=other_address) as other:
        assert flood(flooder, "mallory") == CloseCode.RATE_LIMITED
        wait_until_no_session(flooder)
        # the same address with another token, and the same token from another address: refused, with a retry time
        for client, subject in ((flooder, "alice"), (other, "mallory")):
            refusal = first_message(client, subject)
            assert refusal["type"] == "websocket.close" and refusal["code"] == CloseCode.RATE_LIMITED
            retry = RETRY.search(refusal.get("reason", ""))
            assert retry and 0 < int(retry.group(1)) <= COOLDOWN_S, refusal
        # another address with another token: served as usual
        with hostile.connect(other, hostile.token("bob")) as ws:
            assert json.loads(hostile.receive(ws)["text"])["type"] == "hello"
            assert hostile.probe(ws, "served") is None


def test_a_live_session_of_the_flooders_address_is_not_closed() -> None:
    """The cooldown refuses new connections only: a session already running from that address goes on."""
    app = hostile.make_app(hostile.no_models(), **FLOOD_LIMITS)
    with TestClient(app, client=("203.0.113.9", 1)) as client, hostile.connect(client, hostile.token("carol")) as ws:
        assert json.loads(hostile.receive(ws)["text"])["type"] == "hello"
        assert flood(client, "mallory") == CloseCode.RATE_LIMITED
        deadline = time.monotonic() + END_WAIT_S
        while client.get("/v1/stats").json()["sessions"] > 1:
            assert time.monotonic() < deadline, "the flooding session never ended"
            time.sleep(0.02)
        assert hostile.probe(ws, "still-served") is None
