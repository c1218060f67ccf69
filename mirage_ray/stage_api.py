"""The model deployments' handles API: typed requests and responses for Detector, Swapper, Enhancer and Voice.

Any Ray driver or deployment calls them the way the ingress does (docs/handles.md)::

    swapper = serve.get_deployment_handle("Swapper", app_name="mirage")
    reply: SwapResponse = await swapper.swap.remote(SwapRequest(frame, faces, identity))

Requests validate their payload where they are built (the caller's process), before any hop. A request whose model
call failed raises :class:`StageError` at the caller; the other requests of its batch are unaffected. Also here: the
deployments' batching ``user_config`` (:class:`BatchConfig`, applied by ``reconfigure``) and what they report of it
(:class:`BatchReport`). No Ray import: the types travel through Ray, and the core stays Ray-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mirage_ray.config import MirageSettings, field_range
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.voice.base import VoiceParams


class StageError(RuntimeError):
    """One request failed in the model (its message says which stage and why); the rest of its batch did not."""


@dataclass(frozen=True)
class StageFailure:
    """Inside a deployment: returned in place of one batch item's result when that item failed."""

    message: str


@dataclass(frozen=True)
class IdentityMiss:
    """A swapper replica does not hold the identity a request named by key; the caller resends it in full."""

    key: str


def _check_array(
    value: object, what: str, dtype: type[np.generic], shape: tuple[int | None, ...], expected: str
) -> None:
    """``value`` must be an ndarray of ``dtype`` whose shape matches ``shape`` (None: any size on that axis);
    ``expected`` says so in the error."""
    if (
        not isinstance(value, np.ndarray)
        or value.dtype != dtype
        or value.ndim != len(shape)
        or any(want is not None and got != want for got, want in zip(value.shape, shape, strict=True))
    ):
        raise ValueError(f"{what} must be {expected}, got {type(value).__name__} {getattr(value, 'shape', None)}")


def _check_image(image: object) -> None:
    _check_array(image, "image", np.uint8, (None, None, 3), "a BGR uint8 array (H, W, 3)")


@dataclass(frozen=True, eq=False)
class DetectRequest:
    """A BGR uint8 frame (H, W, 3)."""

    image: np.ndarray

    def __post_init__(self) -> None:
        _check_image(self.image)


@dataclass(frozen=True, eq=False)
class DetectResponse:
    """The frame's faces in its pixel coordinates, best first."""

    faces: tuple[Face, ...]


@dataclass(frozen=True, eq=False)
class IdentityRequest:
    """A reference photo and the face in it that becomes the source identity (see ``choose_reference_face``)."""

    image: np.ndarray
    face: Face

    def __post_init__(self) -> None:
        _check_image(self.image)


@dataclass(frozen=True, eq=False)
class IdentityResponse:
    identity: SourceIdentity


@dataclass(frozen=True, eq=False)
class SwapRequest:
    """Swap ``identity`` onto ``faces`` of ``image`` (a frame, or a region of it with the faces in its coordinates).

    ``identity_key`` lets a caller send the identity in full once: a request with the identity and a key stores it
    in the replica under that key; a request with the key alone uses the stored one, or is answered
    :class:`IdentityMiss` when that replica does not hold it (resend it in full).
    """

    image: np.ndarray
    faces: tuple[Face, ...]
    identity: SourceIdentity | None = None
    identity_key: str | None = None

    def __post_init__(self) -> None:
        _check_image(self.image)
        if self.identity is None and self.identity_key is None:
            raise ValueError("a SwapRequest needs the identity, its key, or both")


@dataclass(frozen=True, eq=False)
class SwapResponse:
    """The image with the faces swapped, same shape as the request's."""

    image: np.ndarray


@dataclass(frozen=True, eq=False)
class RestoreRequest:
    """Aligned 512x512 BGR uint8 face crops (N, 512, 512, 3); ``fidelity`` in [0, 1] (small = more restoration)."""

    crops: np.ndarray
    fidelity: float

    def __post_init__(self) -> None:
        _check_array(self.crops, "crops", np.uint8, (None, None, None, None), "a uint8 array (N, 512, 512, 3)")
        if not 0.0 <= self.fidelity <= 1.0:
            raise ValueError(f"fidelity must be in [0, 1], got {self.fidelity}")


@dataclass(frozen=True, eq=False)
class RestoreResponse:
    crops: np.ndarray


@dataclass(frozen=True, eq=False)
class ConvertRequest:
    """A float32 mono 16 kHz window in [-1, 1]; ``fallback`` asks for the voice stage's fallback converter."""

    window: np.ndarray
    params: VoiceParams = field(default_factory=VoiceParams)
    fallback: bool = False

    def __post_init__(self) -> None:
        _check_array(self.window, "window", np.float32, (None,), "a float32 mono array")


@dataclass(frozen=True, eq=False)
class ConvertResponse:
    """The converted window, same length as the request's."""

    audio: np.ndarray


BATCH_SIZE_RANGE = field_range("batch_max_size")
BATCH_WAIT_RANGE = field_range("batch_wait_s")


class BatchConfig(BaseModel):
    """A model deployment's ``user_config``: its ``@serve.batch`` size and wait, changeable on live replicas.

    Ranges are MirageSettings' (``batch_max_size``, ``batch_wait_s``), which also give the defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(ge=BATCH_SIZE_RANGE[0], le=BATCH_SIZE_RANGE[1])
    batch_wait_timeout_s: float = Field(ge=BATCH_WAIT_RANGE[0], le=BATCH_WAIT_RANGE[1])

    @classmethod
    def from_settings(cls, settings: MirageSettings) -> BatchConfig:
        return cls(max_batch_size=settings.batch_max_size, batch_wait_timeout_s=settings.batch_wait_s)

    @classmethod
    def from_user_config(cls, config: Mapping[str, Any] | None, defaults: BatchConfig) -> BatchConfig:
        """``config`` over ``defaults`` (a key it leaves out keeps the default); refused with the allowed ranges."""
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"batching user_config must be a mapping, got {type(config).__name__}")
        try:
            return cls(**{**defaults.model_dump(), **(config or {})})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(
                f"invalid batching user_config {dict(config or {})!r} ({problems}); allowed: max_batch_size"
                f" {BATCH_SIZE_RANGE[0]}..{BATCH_SIZE_RANGE[1]}, batch_wait_timeout_s"
                f" {BATCH_WAIT_RANGE[0]}..{BATCH_WAIT_RANGE[1]} s"
            ) from None


@dataclass(frozen=True)
class BatchReport:
    """A replica's batching as it runs: the config in effect, and how many batches of each size it ran."""

    replica: str
    max_batch_size: int
    batch_wait_timeout_s: float
    sizes: dict[int, int]

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)
