"""The controller actor's admission bookkeeping, as a plain object (no Ray needed for its logic)."""

from __future__ import annotations

from ray.serve.schema import ApplicationStatus

from actors.controller import ControllerActor, application_deleting, running_replicas


def summary(sid: str, level: int) -> dict:
    return {
        "session_id": sid,
        "t_s": 0.0,
        "stage_p95_ms": {},
        "video_ratio": 0.5,
        "audio_ratio": 0.2,
        "degrade_level": level,
        "max_level": 11,
        "floor": 0,
        "fps_out": 20.0,
        "video_cost_ms_per_s": 100.0,
    }


def test_a_released_session_no_longer_counts_even_if_a_late_push_arrives() -> None:
    controller = ControllerActor(capacity=2)
    assert controller.admit("a")["admitted"]
    controller.push(summary("a", level=4))  # a degraded session: nobody new comes in
    assert not controller.admit("b")["admitted"]
    controller.release("a")
    controller.push(summary("a", level=4))  # its last push, delivered after the release
    assert controller.admit("b")["admitted"]
    assert controller.load()["sessions"] == 1


class FakeStatus:
    """The parts of ``serve.status()`` the controller reads."""

    def __init__(
        self, running: int, starting: int = 0, app_status: ApplicationStatus = ApplicationStatus.RUNNING
    ) -> None:
        replica_states = {"RUNNING": running, "STARTING": starting}
        deployment = type("Deployment", (), {"replica_states": replica_states})()
        app = type("App", (), {"deployments": {"Ingress": deployment}, "status": app_status})()
        self.applications = {"mirage": app}


def test_running_replicas_counts_only_running_ones() -> None:
    assert running_replicas(FakeStatus(2, starting=1), "mirage", "Ingress") == 2
    assert running_replicas(FakeStatus(2), "other", "Ingress") is None
    assert running_replicas(FakeStatus(2), "mirage", "Swapper") is None


def test_capacity_follows_the_ingress_replicas_and_load_shows_the_global_view() -> None:
    controller = ControllerActor(capacity=4)
    controller._per_replica = 1  # what sessions_per_replica=1 sets, without the thread that polls Serve
    controller.ingress_replicas = 1
    assert controller.admit("a")["admitted"]
    assert not controller.admit("b")["admitted"]  # one replica holds one session
    controller.ingress_replicas = 2  # autoscaling added a replica
    assert controller.admit("b")["admitted"]
    controller.report_stage({"deployment": "Swapper", "replica": "r1", "queue": 3, "gpu_mem_fraction": None})
    load = controller.load()
    assert (load["capacity"], load["max_sessions"], load["ingress_replicas"]) == (2, 4, 2)
    assert load["gpu_mem_fraction"] is None  # no GPU reported
    assert load["stages"]["Swapper"] == {"replicas": 1, "queue": 3, "gpu_mem_fraction": None}


def test_the_controller_says_whether_serve_is_deleting_the_app() -> None:
    assert application_deleting(FakeStatus(1, app_status=ApplicationStatus.DELETING), "mirage")
    assert not application_deleting(FakeStatus(1), "mirage")
    assert not application_deleting(FakeStatus(1, app_status=ApplicationStatus.DELETING), "other")  # absent app
    assert ControllerActor(capacity=2).deleting(since=0.0) is None  # not watching Serve: the ingress asks Serve


def test_a_deletion_seen_before_a_replica_started_is_not_its_answer() -> None:
    controller = ControllerActor(capacity=2)
    controller._deleting = (True, 100.0)  # what its watcher thread records: (deleting, when Serve was asked)
    assert controller.deleting(since=50.0) is True
    assert controller.deleting(since=150.0) is None  # maybe the application before a redeploy: ask Serve
    controller._deleting = (False, 100.0)
    assert controller.deleting(since=150.0) is False
