"""Admission by measured load: the pure policy, and the front door refusing with 1013 then admitting again."""

from __future__ import annotations

import json

import pytest
from starlette.websockets import WebSocketDisconnect

from mirage_ray.adapt import ACCEPT_BELOW
from mirage_ray.admission import RESERVATION_S, AdmissionPolicy, LocalAdmission, Verdict, capacity_for
from mirage_ray.metrics import SessionSummary
from mirage_ray.protocol import CloseCode
from tests.unit.test_server import backends, connect, make_client, token  # noqa: F401 (fixture)


def summary(sid: str, level: int = 0, audio_ratio: float | None = 0.1) -> SessionSummary:
    return SessionSummary(
        session_id=sid,
        t_s=0.0,
        stage_p95_ms={},
        video_ratio=0.3,
        audio_ratio=audio_ratio,
        degrade_level=level,
        max_level=11,
        floor=0,
        fps_out=20.0,
        video_cost_ms_per_s=100.0,
    )


def test_admits_up_to_the_measured_capacity_counting_reservations() -> None:
    policy = AdmissionPolicy(capacity=2)
    assert policy.decide([], 0.0).admitted
    policy.reserve("a", 0.0)  # admitted, no summary yet: it still counts
    assert policy.decide([], 0.1).admitted
    policy.reserve("b", 0.1)
    full = policy.decide([], 0.2)
    assert not full.admitted and "full (2/2" in full.reason and full.retry_after_s > 0
    # a's first summary replaces its reservation (still 2), b ends: room again
    policy.release("b")
    assert policy.decide([summary("a")], 0.3).admitted


def test_a_reservation_without_a_summary_expires() -> None:
    policy = AdmissionPolicy(capacity=1)
    policy.reserve("ghost", 0.0)
    assert not policy.decide([], 1.0).admitted
    assert policy.decide([], RESERVATION_S + 0.1).admitted


@pytest.mark.parametrize(
    ("stressed", "why"),
    [(summary("x", level=1), "degraded"), (summary("x", audio_ratio=ACCEPT_BELOW), "voice runtime/real")],
)
def test_an_admitted_session_out_of_budget_closes_the_door(stressed: SessionSummary, why: str) -> None:
    policy = AdmissionPolicy(capacity=8)
    verdict = policy.decide([summary("ok"), stressed], 0.0)
    assert not verdict.admitted and why in verdict.reason and "retry in" in verdict.reason
    load = policy.load([summary("ok"), stressed], 0.0)
    assert load == {**load, "capacity": 8, "sessions": 2, "headroom": 0, "load": 1.0, "accepting": False}
    calm = policy.load([summary("ok"), summary("x")], 0.0)
    assert calm == {**calm, "sessions": 2, "headroom": 6, "load": 0.25, "accepting": True}


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        AdmissionPolicy(0)


class InjectedLoad:
    """An admission gate whose load the test sets (the application-wide view is the controller's in Serve)."""

    def __init__(self) -> None:
        self.full = True
        self.released: list[str] = []

    async def admit(self, session_id: str) -> Verdict:
        if self.full:
            return Verdict(False, "server full (4/4 sessions); retry in 30 s", 30.0)
        return Verdict(True, "admitted")

    async def release(self, session_id: str) -> None:
        self.released.append(session_id)

    async def load(self) -> dict:
        return {"capacity": 4, "sessions": 4 if self.full else 3, "headroom": 0 if self.full else 1}


def test_the_front_door_refuses_1013_while_full_and_admits_when_the_load_drops(backends: dict) -> None:  # noqa: F811
    gate = InjectedLoad()
    with make_client(backends, admission=gate) as client:
        with connect(client, token()) as ws, pytest.raises(WebSocketDisconnect) as refused:
            ws.receive_text()
        assert refused.value.code == CloseCode.TRY_AGAIN and "server full" in refused.value.reason
        stats = client.get("/v1/stats").json()
        assert stats["admission"]["headroom"] == 0 and stats["totals"]["sessions_refused"] == 1
        gate.full = False
        with connect(client, token()) as ws:
            hello = json.loads(ws.receive_text())
            assert hello["type"] == "hello"
            assert client.get("/v1/stats").json()["admission"]["headroom"] == 1
        assert gate.released == [hello["session_id"]]  # the slot is given back when the session ends


async def test_the_local_gate_uses_the_sessions_summaries() -> None:
    live: list[SessionSummary] = []
    gate = LocalAdmission(2, lambda: live, clock=lambda: 0.0)
    assert (await gate.admit("a")).admitted
    live.append(summary("a", level=3))
    verdict = await gate.admit("b")
    assert not verdict.admitted and "degraded" in verdict.reason
    live[0] = summary("a")
    assert (await gate.admit("b")).admitted
    assert (await gate.load())["headroom"] == 0  # a and b hold both slots


def test_without_the_live_rule_only_the_capacity_closes_the_door() -> None:
    policy = AdmissionPolicy(capacity=2, live_load=False)
    assert policy.decide([summary("x", level=5)], 0.0).admitted  # degraded, but below capacity
    assert not policy.decide([summary("x", level=5), summary("y")], 0.0).admitted


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [(None, 2), (0, 2), (1, 2), (3, 6), (4, 8), (10, 8)],  # unknown: one replica (the one asking); the ceiling caps
)
def test_capacity_follows_running_ingress_replicas(replicas: int | None, expected: int) -> None:
    assert capacity_for(replicas, sessions_per_replica=2, max_sessions=8) == expected


def test_a_replica_going_away_closes_the_door_for_its_share() -> None:
    policy = AdmissionPolicy(capacity_for(2, 1, 4))
    policy.reserve("a", 0.0)
    assert policy.decide([], 0.0).admitted
    policy.set_capacity(capacity_for(1, 1, 4))  # autoscaling removed a replica
    verdict = policy.decide([], 0.0)
    assert not verdict.admitted and "1/1" in verdict.reason
    with pytest.raises(ValueError):
        policy.set_capacity(0)
