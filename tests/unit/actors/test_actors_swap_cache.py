"""The swapper's identity cache: sent in full once, then by key; a miss (other replica, eviction) resends it."""

from __future__ import annotations

import numpy as np
import pytest

from actors.deployments import IdentityCache, SwapperDeployment
from actors.ingress import RayStages
from mirage_ray.config import MirageSettings
from mirage_ray.stage_api import IdentityMiss, SwapRequest, SwapResponse
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.faces import SourceIdentity
from mirage_ray.vision.swap_classical import ClassicalSwapper
from tests.media import astronaut, insightface_image


@pytest.fixture(scope="module")
def swap_setup():
    detector, swapper = RetinaFaceDetector(), ClassicalSwapper()
    reference = insightface_image("Tom_Hanks_54745.png")
    identity = swapper.identity(reference, detector.detect(reference)[0])
    return swapper, identity, detector.detect(astronaut())[:1]


def test_cache_stores_full_identities_and_evicts_the_least_recent() -> None:
    cache = IdentityCache(size=2)
    a, b, c = (SourceIdentity("x", face=None) for _ in range(3))  # type: ignore[arg-type]
    assert cache.resolve(None, "a") is None
    assert cache.resolve(a, "a") is a and cache.resolve(b, "b") is b
    assert cache.resolve(None, "a") is a  # touch a: b is now the oldest
    cache.resolve(c, "c")
    assert cache.resolve(None, "b") is None and cache.resolve(None, "a") is a


class NoReports:
    """In place of the replica's reporter: outside a Ray cluster there is no controller to report to (looking it up
    would start a local Ray instance in the test process)."""

    def maybe_report(self) -> None:
        pass


class Replica:
    """One SwapperDeployment (the real class) whose batch method runs without Serve's queue: a batch of one."""

    def __init__(self) -> None:
        self.deployment = SwapperDeployment(MirageSettings(swapper="classical"))
        self.deployment._gpu = NoReports()

    async def swap(self, request: SwapRequest):
        [result] = await SwapperDeployment._swap_batch.__wrapped__(self.deployment, [request])
        return result


class ScriptedRouter:
    """Routes each call to the next replica index in ``route`` (Serve's router picks replicas on its own)."""

    def __init__(self, replicas: list[Replica], route: list[int], log: list[tuple[int, bool]]) -> None:
        self._replicas, self._route, self._log = replicas, iter(route), log

    def remote(self, request: SwapRequest):
        replica = next(self._route)
        self._log.append((replica, request.identity is not None))
        return self._replicas[replica].swap(request)


class Handle:
    def __init__(self, method: ScriptedRouter) -> None:
        self.swap = method


async def test_ray_stages_sends_the_identity_once_then_only_on_a_miss(swap_setup) -> None:
    _, identity, faces = swap_setup
    log: list[tuple[int, bool]] = []
    router = ScriptedRouter([Replica(), Replica()], [0, 1, 1, 1, 0], log)
    stages = RayStages({"swapper": Handle(router)})
    image = astronaut()
    outputs = [await stages.swap(image, faces, identity) for _ in range(4)]
    # 1: replica 0 gets it in full; 2: replica 1 gets only the key, misses, and gets it in full on the resend;
    # 3 and 4: keys only, on both replicas
    assert log == [(0, True), (1, False), (1, True), (1, False), (0, False)]
    assert all(np.array_equal(outputs[0], out) for out in outputs[1:])
    assert not np.array_equal(outputs[0], image)


async def test_a_request_without_a_key_is_swapped_and_not_cached(swap_setup) -> None:
    _, identity, faces = swap_setup
    replica = Replica()
    swapped = await replica.swap(SwapRequest(astronaut(), tuple(faces), identity))
    assert isinstance(swapped, SwapResponse) and not np.array_equal(swapped.image, astronaut())
    by_key = SwapRequest(astronaut(), tuple(faces), identity_key="never-sent")
    assert isinstance(await replica.swap(by_key), IdentityMiss)


def test_restore_batches_by_fidelity_and_routes_each_result_home() -> None:
    from actors.deployments import restore_batched
    from mirage_ray.stage_api import StageFailure

    calls: list[tuple[int, float]] = []

    class Brighten:
        def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
            calls.append((len(crops), fidelity))
            if fidelity > 0.9:
                raise RuntimeError("weights unusable at this fidelity")
            return crops + np.uint8(10 * fidelity)

    crops = [np.full((n, 4, 4, 3), 10 * i, np.uint8) for i, n in enumerate((1, 2, 1, 3))]
    out = restore_batched(Brighten(), crops, [0.5, 0.3, 0.5, 1.0])
    assert sorted(calls) == [(2, 0.3), (2, 0.5), (3, 1.0)]  # one model call per fidelity, crops concatenated
    assert [o.shape[0] for o in out[:3]] == [1, 2, 1]
    assert int(out[0][0, 0, 0, 0]) == 0 + 5 and int(out[1][0, 0, 0, 0]) == 10 + 3 and int(out[2][0, 0, 0, 0]) == 25
    assert isinstance(out[3], StageFailure)  # the failed group fails alone
