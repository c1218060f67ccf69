"""Reference acceptance: which face of an uploaded photo becomes the source identity, or why none can."""

from __future__ import annotations

from mirage_ray.vision.base import MIN_REFERENCE_FACE_PX, ReferenceRejected
from mirage_ray.vision.faces import Face, largest_faces

EQUAL_FACES_RATIO = 0.9  # two reference faces this close in size are ambiguous


def choose_reference_face(faces: list[Face]) -> Face:
    """The largest face; raises :class:`ReferenceRejected` with advice for the user when there is no clear one."""
    if not faces:
        raise ReferenceRejected("No face was found in that photo. Use a clear, front-facing photo of one person.")
    ranked = largest_faces(faces, 2)
    if ranked[0].size < MIN_REFERENCE_FACE_PX:
        raise ReferenceRejected(
            f"The face in that photo is too small ({ranked[0].size:.0f} px); use a photo where the face is at "
            f"least {MIN_REFERENCE_FACE_PX} px across."
        )
    if len(ranked) > 1 and ranked[1].area >= EQUAL_FACES_RATIO * ranked[0].area:
        raise ReferenceRejected(
            "That photo has several faces of about the same size; crop it to the one person you want to become."
        )
    return ranked[0]
