"""The app across a multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and two worker
nodes, each worker with one logical GPU): frames cross nodes through the object store, a worker node is removed
mid-session, the session keeps streaming (what was on the lost node fails closed, then recovers), and a new session
is served.

Placement is pinned with custom node resources so the frames really cross nodes: the proxy, the ingress and the
controller on the head (no GPU); Detector, Enhancer and Voice on worker A; one Swapper replica on each worker
(``max_replicas_per_node: 1``). Removing worker B takes one Swapper replica away.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.launch import deploy, free_port, pin_ray_auth_mode, stop_processes, wait_running
from mirage_ray.protocol import FLAG_PASSTHROUGH, Kind
from tests.conftest import REPO_ROOT, TEST_JWT_SECRET, ServeApp
from tests.integration.client import Client
from tests.media import moving_face_frames

pytestmark = pytest.mark.integration
READY_TIMEOUT_S = 240.0
STREAM_FPS = 5.0
AFTER_REMOVAL_S = 20.0  # streaming after the node is gone
SWAP_WITHIN_FRAMES = 20  # a session swaps within this many frames (first calls, a lost replica's calls fail closed)
HEAD, NODE_A, NODE_B = "mirage_head", "mirage_node_a", "mirage_node_b"
PLACEMENT = {  # deployment -> (custom resource it needs, replicas)
    "Ingress": (HEAD, 1),
    "Detector": (NODE_A, 1),
    "Enhancer": (NODE_A, 1),
    "Voice": (NODE_A, 1),
    "Swapper": (None, 2),  # one per worker: GPU fraction + max_replicas_per_node 1 (the head has no GPU)
}
PLACEMENT_SNIPPET = """
import json
import ray._private.state as state
nodes = {n['NodeID']: [r for r in n['Resources'] if r.startswith('mirage_')] for n in ray.nodes() if n['Alive']}
where = {}
for actor in state.actors().values():
    name = actor.get('ActorClassName') or ''
    if actor.get('State') == 'ALIVE' and name.startswith('ServeReplica:mirage:'):
        node = actor['Address']['NodeID']
        where.setdefault(name.split(':')[-1], []).append(nodes.get(node, ['?'])[0] if nodes.get(node) else '?')
print(json.dumps(where))
"""


@dataclass
class MultiNodeApp:
    app: ServeApp
    cluster: Any
    worker_b: Any


def multinode_config(out: Path, port: int) -> Path:
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = config["applications"]
    app["args"].update(
        host="127.0.0.1",
        port=port,
        jwt_secret=TEST_JWT_SECRET,
        admission_live_load=False,
        # three Ray nodes on two busy cores: a stage call crossing nodes can take seconds; this test is about where
        # frames go and what survives a node's loss, not latency (the default 400 ms would mask every frame here)
        video_stage_timeout_ms=5000.0,
        stage_budget_ms={"video.detect": 100000, "video.swap": 100000, "video.enhance": 100000},
    )
    for deployment in app["deployments"]:
        resource, replicas = PLACEMENT[deployment["name"]]
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = replicas
        options = deployment["ray_actor_options"]
        if deployment["name"] == "Ingress":
            options["num_cpus"] = 0.5
        if resource is not None:
            options["resources"] = {resource: 0.1}
        else:
            deployment["max_replicas_per_node"] = 1
    path = out / "serve_config.multinode.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snippet(address: str, code: str, timeout_s: float = 120.0) -> str:
    prelude = f"import ray\nray.init(address={address!r}, log_to_driver=False, logging_level='ERROR')\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def multinode() -> Iterator[MultiNodeApp]:
    from ray.cluster_utils import Cluster

    temp_dir = Path(tempfile.mkdtemp(prefix="mirage-mn-"))
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        # the nodes' processes (and the Serve replicas they start) inherit these
        pin_ray_auth_mode()  # as the launcher does: a stray ~/.ray/auth_token must not turn token auth on
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))

        def ports() -> dict[str, Any]:
            """Free ports for each node's agents: no clash with other Ray instances on this machine, and no wait
            for an agent to write its port file (a raylet that waits too long on a busy machine gives up)."""
            names = ("metrics_agent_port", "metrics_export_port", "runtime_env_agent_port")
            names += ("dashboard_agent_listen_port",)
            return {"temp_dir": str(temp_dir), **{name: free_port() for name in names}}

        cluster = None
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    **ports(),
                    "gcs_server_port": free_port(),
                    "include_dashboard": False,
                    "num_cpus": 2,
                    "resources": {HEAD: 1},
                },
                shutdown_at_exit=True,
            )
            cluster.add_node(**ports(), num_cpus=2, num_gpus=1, resources={NODE_A: 1})
            worker_b = cluster.add_node(**ports(), num_cpus=2, num_gpus=1, resources={NODE_B: 1})
            cluster.wait_for_nodes(timeout=120)
            config = multinode_config(temp_dir, port)
            deploy(config, cluster.address)
            statuses = wait_running(cluster.address, READY_TIMEOUT_S)
            url = f"http://127.0.0.1:{port}/"
            app = ServeApp(url, url.replace("http://", "ws://") + "ws", cluster.address, 0, statuses, config)
            yield MultiNodeApp(app, cluster, worker_b)
        finally:
            if cluster is not None:
                cluster.shutdown()
            stop_processes(temp_dir)  # anything of this cluster still alive (a replica that outlived its raylet)
            shutil.rmtree(temp_dir, ignore_errors=True)


async def swapped_reply(client: Client, seq: int, frame: bytes, timeout_s: float = 30.0) -> int:
    """Send one frame and return its reply's flags."""
    await client.send(Kind.VIDEO, seq, int(time.monotonic() * 1e6), frame)
    await client.wait_for(lambda: any(m.seq == seq for m in client.media[Kind.VIDEO]), timeout_s, f"frame {seq}")
    return next(m.flags for m in client.media[Kind.VIDEO] if m.seq == seq)


async def frames_until_swapped(client: Client, first_seq: int, frames: list[bytes]) -> int:
    """Send frames from ``first_seq`` until one comes back swapped (a first call across nodes can outlast the video
    stage timeout: that frame goes out masked and flagged); returns the next seq. Fails after SWAP_WITHIN_FRAMES."""
    for seq in range(first_seq, first_seq + SWAP_WITHIN_FRAMES):
        if not await swapped_reply(client, seq, frames[seq % len(frames)]) & FLAG_PASSTHROUGH:
            return seq + 1
    raise AssertionError(f"no swapped frame among {SWAP_WITHIN_FRAMES} from seq {first_seq}")


async def test_sessions_across_nodes_survive_a_worker_node_removal(multinode: MultiNodeApp) -> None:
    app = multinode.app
    assert set(app.deployments.values()) == {"RUNNING"}
    where = json.loads(snippet(app.ray_address, PLACEMENT_SNIPPET))
    assert where["Ingress"] == [HEAD]
    assert {node for name in ("Detector", "Enhancer", "Voice") for node in where[name]} == {NODE_A}
    assert sorted(where["Swapper"]) == [NODE_A, NODE_B]  # every frame goes head -> worker and back
    frames = moving_face_frames(20, step_px=2)
    client = await Client.open_disguised(app)
    await frames_until_swapped(client, 1, frames)  # served end to end across nodes: swapped, not passed through

    removed_at_seq = 0
    next_seq = 100  # within the server's seq tolerance of the frames before; the tail continues from the stream
    stop = asyncio.Event()

    async def stream() -> None:
        nonlocal next_seq
        while not stop.is_set():
            await client.send(Kind.VIDEO, next_seq, int(time.monotonic() * 1e6), frames[next_seq % len(frames)])
            next_seq += 1
            await asyncio.sleep(1.0 / STREAM_FPS)

    streaming = asyncio.create_task(stream())
    try:
        await asyncio.sleep(3.0)
        removed_at_seq = max((m.seq for m in client.media[Kind.VIDEO]), default=0)
        await asyncio.to_thread(multinode.cluster.remove_node, multinode.worker_b)
        await asyncio.sleep(AFTER_REMOVAL_S)
    finally:
        stop.set()
        await streaming
    assert client.socket.close_code is None  # the session lived through the node's loss
    after = [m for m in client.media[Kind.VIDEO] if m.seq > removed_at_seq]
    assert len(after) >= AFTER_REMOVAL_S * STREAM_FPS / 4, f"only {len(after)} frames came back after the removal"
    # recovered: the surviving Swapper replica swaps again (frames lost with the node went out masked and flagged)
    await frames_until_swapped(client, next_seq, frames)
    # a new session is served by what is left
    second = await Client.open_disguised(app)
    await frames_until_swapped(second, 1, frames)
    await second.close()
    await client.close()
