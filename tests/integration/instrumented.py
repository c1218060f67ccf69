"""The integration tests' application: the production builder with model deployments a test can slow at run time.

Test-only, so production code carries no hooks. tests/conftest.py deploys serve_config.yaml with its ``import_path``
pointed here; Ray's workers import this module from the repository root (actors.launch puts it on PYTHONPATH).
Each instrumented deployment wraps its backends so that every model call first sleeps the delay a test set with
``set_test_delay`` (in the batch's worker thread: the stage behaves like a slow model).
"""

from __future__ import annotations

import functools
import time
from typing import Any, ClassVar

from ray.serve import Application

from actors.app import build_application
from actors.deployments import DetectorDeployment, EnhancerDeployment, SwapperDeployment, VoiceDeployment
from mirage_ray.config import MirageSettings, load_settings


class Delay:
    """Extra latency per model call, in ms (0: none)."""

    def __init__(self) -> None:
        self.ms = 0.0

    def sleep(self) -> None:
        if self.ms > 0:
            time.sleep(self.ms / 1000.0)


class DelayedBackend:
    """A backend whose every method first sleeps ``delay``; attributes pass through unchanged."""

    def __init__(self, backend: Any, delay: Delay) -> None:
        self._backend = backend
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._backend, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def delayed(*args: Any, **kwargs: Any) -> Any:
            self._delay.sleep()
            return value(*args, **kwargs)

        return delayed


class Delayable:
    """Mixin for a model deployment: its backends (attribute names in BACKENDS) answer after a settable delay."""

    BACKENDS: ClassVar[tuple[str, ...]]

    def __init__(self, settings: MirageSettings) -> None:
        super().__init__(settings)  # type: ignore[call-arg]
        self._test_delay = Delay()
        for name in self.BACKENDS:
            setattr(self, name, DelayedBackend(getattr(self, name), self._test_delay))

    def set_test_delay(self, ms: float) -> float:
        """Add ``ms`` of latency to every model call of this replica (0 removes it); returns the delay in effect."""
        self._test_delay.ms = max(0.0, float(ms))
        return self._test_delay.ms


class DelayableDetector(Delayable, DetectorDeployment):
    BACKENDS = ("_detector",)


class DelayableSwapper(Delayable, SwapperDeployment):
    BACKENDS = ("_swapper",)


class DelayableEnhancer(Delayable, EnhancerDeployment):
    BACKENDS = ("_enhancer",)


class DelayableVoice(Delayable, VoiceDeployment):
    BACKENDS = ("_primary", "_fallback")


def build_app(args: dict[str, Any]) -> Application:
    """actors.app's application, with the model deployments above under their production names."""
    classes = {
        "Detector": DelayableDetector,
        "Swapper": DelayableSwapper,
        "Enhancer": DelayableEnhancer,
        "Voice": DelayableVoice,
    }
    return build_application(load_settings(**args), classes)
