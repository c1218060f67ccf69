"""A named no-op swapper for diagnostics: frames come back unchanged and are flagged passthrough."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mirage_ray.vision.faces import Face, SourceIdentity


class PassthroughSwapper:
    """Returns the frame unchanged; the session reports every frame as passthrough."""

    name = "passthrough"

    def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        return SourceIdentity(backend=self.name, face=face)

    def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        return image
