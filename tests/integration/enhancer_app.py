"""The enhancer fault test's application: the production builder with a stand-in restorer in the Enhancer deployment.

No CodeFormer weights can exist on this project's machines, and CodeFormer with random weights takes 11-13 s per crop
on their CPUs (docs/benchmarks.md), far beyond the video stage timeout; the embedded default is no enhancer at all,
so the session would never call the Enhancer deployment. The stand-in brightens the crops it gets: cheap, and
visible in the output, so a test can tell enhanced frames from frames whose enhancement failed. Everything else
(the deployment class, batching, handles, the session's enhance path) is the production code.
Test-only: Ray's workers import this module from the repository root (actors.launch puts it on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.serve import Application

from actors.app import build_application
from actors.deployments import EnhancerDeployment
from mirage_ray.backends import Choice
from mirage_ray.config import MirageSettings, load_settings
from mirage_ray.vision.enhance_none import check_restore_args

IMPORT_PATH = "tests.integration.enhancer_app:build_app"
BRIGHTEN = 80  # added to every pixel of a restored crop


class BrighteningRestorer:
    """A restorer stand-in: the aligned crops come back brighter by BRIGHTEN."""

    name = "stand-in-brighten"

    def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        check_restore_args(crops, fidelity)
        return np.clip(crops.astype(np.int16) + BRIGHTEN, 0, 255).astype(np.uint8)


class StandInEnhancer(EnhancerDeployment):
    """The production Enhancer deployment around the stand-in restorer (reported as a real enhancer)."""

    def __init__(self, settings: MirageSettings) -> None:
        super().__init__(settings)
        self._enhancer = BrighteningRestorer()
        self._choice = Choice("enhancer", BrighteningRestorer.name, "test stand-in: no CodeFormer weights here", False)


def build_app(args: dict[str, Any]) -> Application:
    return build_application(load_settings(**args), {"Enhancer": StandInEnhancer})
