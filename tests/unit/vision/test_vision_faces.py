"""Face helpers: translation into a crop's coordinates and the region sent to the swapper."""

import numpy as np

from mirage_ray.vision.faces import Face, face_region, largest_faces, translate


def face(x1: float, y1: float, x2: float, y2: float) -> Face:
    kps = np.array([[x1 + 5, y1 + 5]] * 5, np.float32)
    return Face(np.array([x1, y1, x2, y2], np.float32), kps, 0.9, landmarks=np.zeros((68, 2), np.float32) + x1)


def test_translate_moves_every_coordinate_and_returns_a_new_face() -> None:
    original = face(100, 50, 200, 170)
    moved = translate(original, -90, -40)
    assert moved.bbox.tolist() == [10, 10, 110, 130]
    assert moved.kps[0].tolist() == [15, 15]
    assert moved.landmarks[0].tolist() == [10, 60]
    assert original.bbox.tolist() == [100, 50, 200, 170]  # not mutated


def test_face_region_grows_each_box_and_clips_to_the_image() -> None:
    faces = [face(100, 100, 200, 220), face(300, 120, 350, 170)]
    assert face_region(faces, 512, 512, 0.5) == (40, 40, 375, 280)
    assert face_region([face(0, 0, 100, 100)], 120, 90, 0.5) == (0, 0, 120, 90)


def test_largest_faces_keeps_the_biggest_first() -> None:
    small, big = face(0, 0, 10, 10), face(0, 0, 50, 50)
    assert largest_faces([small, big], 1) == [big]
