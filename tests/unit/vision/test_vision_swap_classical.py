"""Classical (dlib 68-landmark) swapper on real faces: identity moves to the source, nothing outside the face changes.

Identity is measured with dlib's 128-d face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, shipped by
face-recognition-models), each face aligned by the landmarks predicted on the image being described (the swap changes
the face's shape); dlib treats distances below 0.6 as the same person. Measured (target -> source before the swap,
then swapped -> source; in brackets the swapper before the shape morph, issue 12):
    Tom Hanks -> astronaut: 0.756 -> 0.416 (0.536)
    t1.jpg face 0 (left) -> astronaut: 0.689 -> 0.347 (0.463)
    Tom Hanks -> t1.jpg's four frontal faces: 0.826/0.789/0.751/0.843 -> 0.496/0.477/0.458/0.499
        (0.646/0.627/0.536/0.667)
    Tom Hanks -> astronaut rolled by 25 degrees: 0.758 -> 0.405 (0.510)
Moving held-out sequences are in test_vision_swap_identity.py.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest
from skimage import data

from mirage_ray.vision.align import similarity_matrix
from mirage_ray.vision.base import ReferenceRejected, Swapper
from mirage_ray.vision.face_shape import fit_similarity
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.vision.landmarks_dlib import (
    FACE_DESCRIPTOR_FILE,
    INNER_LIPS,
    LANDMARKS_68_FILE,
    DlibLandmarks,
    DlibModelMissing,
    dlib_model_path,
    kps_from_landmarks,
)
from mirage_ray.vision.swap_classical import (
    CLASSICAL_NAME,
    ClassicalSwapper,
    blend_weight,
    destination_points,
    mask_box,
    morph_polygon,
)

IMAGES = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"
SAME_PERSON = 0.6  # dlib's documented threshold for its face descriptor
MIN_IDENTITY_GAIN = 0.2  # swapped->source must be at least this much closer than target->source (measured >= 0.29)


@pytest.fixture(scope="session")
def landmarks() -> DlibLandmarks:
    return DlibLandmarks()


@pytest.fixture(scope="session")
def swapper(landmarks: DlibLandmarks) -> ClassicalSwapper:
    return ClassicalSwapper(landmarks)


@pytest.fixture(scope="session")
def images() -> dict[str, np.ndarray]:
    return {
        "hanks": cv2.imread(str(IMAGES / "Tom_Hanks_54745.png")),
        "t1": cv2.imread(str(IMAGES / "t1.jpg")),
        "astronaut": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR),
    }


@pytest.fixture(scope="session")
def faces(images: dict[str, np.ndarray], landmarks: DlibLandmarks) -> dict[str, list[Face]]:
    """Faces found by dlib's HOG detector, with insightface-order keypoints from the 68 landmarks, left to right."""
    detector = dlib.get_frontal_face_detector()
    found = {}
    for key, image in images.items():
        rects = list(detector(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), 1))
        # t1.jpg: all six, left to right; otherwise the largest (astronaut() also gives a false hit on her badge)
        rects = sorted(rects, key=lambda r: r.left()) if key == "t1" else [max(rects, key=lambda r: r.area())]
        found[key] = [
            Face(
                bbox=np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32),
                kps=kps_from_landmarks(landmarks.predict(image, (r.left(), r.top(), r.right(), r.bottom()))),
                score=1.0,
            )
            for r in rects
        ]
    return found


@pytest.fixture(scope="session")
def describe():
    """dlib 128-d face descriptor of the face aligned by the given 68 landmarks (frame coordinates), BGR image."""
    recognizer = dlib.face_recognition_model_v1(str(dlib_model_path(FACE_DESCRIPTOR_FILE)))

    def descriptor(image: np.ndarray, points: np.ndarray) -> np.ndarray:
        x1, y1 = np.floor(points.min(axis=0)).astype(int)
        x2, y2 = np.ceil(points.max(axis=0)).astype(int)
        parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in points])
        shape = dlib.full_object_detection(dlib.rectangle(int(x1), int(y1), int(x2), int(y2)), parts)
        return np.array(recognizer.compute_face_descriptor(np.ascontiguousarray(image[..., ::-1]), shape, 1))

    return descriptor


@pytest.fixture(scope="session")
def hanks(swapper: ClassicalSwapper, images, faces) -> SourceIdentity:
    return swapper.identity(images["hanks"], faces["hanks"][0])


def test_dlib_model_files_are_located_without_importing_the_package() -> None:
    assert dlib_model_path(LANDMARKS_68_FILE).stat().st_size > 90_000_000
    assert dlib_model_path(FACE_DESCRIPTOR_FILE).is_file()
    with pytest.raises(DlibModelMissing, match="pip install face-recognition-models"):
        dlib_model_path("no_such_model.dat")


def test_landmarks_from_keypoints_match_the_predictor_on_dlibs_own_box(images, faces, landmarks) -> None:
    image, face = images["astronaut"], faces["astronaut"][0]
    direct = landmarks.predict(image, tuple(face.bbox))
    from_kps = landmarks.from_kps(image, face.kps)
    eye_distance = float(np.linalg.norm(face.kps[1] - face.kps[0]))
    assert np.linalg.norm(from_kps - direct, axis=1).mean() < 0.05 * eye_distance
    # a 30-degree roll: the canonical crop makes the predictor rotation-proof
    centre = tuple(float(v) for v in face.kps.mean(axis=0))
    rot = cv2.getRotationMatrix2D(centre, 30, 1.0)
    rolled = cv2.warpAffine(image, rot, image.shape[1::-1])
    rolled_kps = (np.c_[face.kps, np.ones(5)] @ rot.T).astype(np.float32)
    expected = np.c_[direct, np.ones(68)] @ rot.T
    assert np.linalg.norm(landmarks.from_kps(rolled, rolled_kps) - expected, axis=1).mean() < 0.06 * eye_distance


def test_identity_holds_an_aligned_crop_its_landmarks_and_the_cached_triangulation(swapper, hanks) -> None:
    assert isinstance(swapper, Swapper) and swapper.name == CLASSICAL_NAME == hanks.backend
    assert hanks.crop.shape == (256, 256, 3) and hanks.crop.dtype == np.uint8
    assert hanks.crop_landmarks.shape == (68, 2)
    assert (hanks.crop_landmarks > 0).all() and (hanks.crop_landmarks < 256).all()
    points, triangles = hanks.extras["points"], hanks.extras["triangles"]
    assert np.allclose(points[:68], hanks.crop_landmarks)
    assert triangles.ndim == 2 and triangles.shape[1] == 3 and triangles.max() == len(points) - 1
    assert hanks.face.landmarks.shape == (68, 2)
    source = hanks.extras["source_bgra"]  # the crop + where it may paint: the face, never the crop's padding
    assert source.shape == (256, 256, 4) and np.array_equal(source[..., :3], hanks.crop)
    face = np.zeros((256, 256), np.uint8)
    cv2.fillConvexPoly(face, np.round(cv2.convexHull(hanks.crop_landmarks[:27])).astype(np.int32), 1)
    assert (source[..., 3][cv2.erode(face, np.ones((9, 9), np.uint8)) > 0] == 255).all()
    assert (source[-4:, :, 3] == 0).all()  # below the 112 px photo: padding


def test_swap_makes_the_target_look_like_the_source(swapper, landmarks, images, faces, describe, hanks) -> None:
    t1 = faces["t1"]
    jennifer = swapper.identity(images["t1"], t1[0])
    cases = [
        (hanks, images["hanks"], faces["hanks"][0], images["astronaut"], faces["astronaut"]),
        (jennifer, images["t1"], t1[0], images["astronaut"], faces["astronaut"]),
        (hanks, images["hanks"], faces["hanks"][0], images["t1"], [t1[0], t1[2], t1[3], t1[5]]),  # the frontal ones
    ]
    for identity, source_image, source_face, target_image, targets in cases:
        source = describe(source_image, swapper.target_landmarks(source_image, source_face))
        swapped = swapper.swap(target_image, targets, identity)
        for face in targets:
            before = np.linalg.norm(describe(target_image, landmarks.from_kps(target_image, face.kps)) - source)
            # the swap changes the face's shape: the descriptor reads the landmarks of the face it produced
            after = np.linalg.norm(describe(swapped, landmarks.from_kps(swapped, face.kps)) - source)
            assert after < before - MIN_IDENTITY_GAIN, (before, after)
            assert after < SAME_PERSON, after


def test_only_pixels_inside_the_faces_rings_change(swapper, images, faces, hanks) -> None:
    image = images["t1"]
    before = image.copy()
    swapped = swapper.swap(image, faces["t1"], hanks)
    assert np.array_equal(image, before), "the input frame was modified"
    allowed = np.zeros(image.shape[:2], np.uint8)
    for face in faces["t1"]:
        # the ring the morph ends at: the source's ring placed on the reshaped face
        points = destination_points(swapper.target_landmarks(image, face), hanks.extras["points"])
        cv2.fillConvexPoly(allowed, np.round(morph_polygon(points)).astype(np.int32), 1)
    allowed = cv2.dilate(allowed, np.ones((9, 9), np.uint8))  # the maps are interpolated over 2 px cells
    changed = np.any(swapped != image, axis=2)
    assert changed.sum() > 6 * 3000  # every face changed substantially
    assert not np.any(changed & (allowed == 0))


def test_the_targets_mouth_interior_is_kept(swapper, images, faces, hanks) -> None:
    # smiling, teeth visible; twice the size, since Hanks's narrower mouth shrinks her smile
    image = cv2.resize(images["astronaut"], None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
    face = Face(bbox=faces["astronaut"][0].bbox * 2, kps=faces["astronaut"][0].kps * 2, score=1.0)
    target = swapper.target_landmarks(image, face)
    moved = destination_points(target, hanks.extras["points"])[INNER_LIPS]
    interior = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(interior, [np.round(moved).astype(np.int32)], 1)
    interior = cv2.erode(interior, np.ones((3, 3), np.uint8)).astype(bool)
    assert interior.sum() > 100  # an open mouth
    swapped = swapper.swap(image, [face], hanks)
    # the mouth moves with the face's new shape as one similarity; inside the lips it is the target's own mouth
    mouth_move = similarity_matrix(target[INNER_LIPS], moved)
    expected = cv2.warpAffine(image, mouth_move, image.shape[1::-1], flags=cv2.INTER_LINEAR)
    difference = np.abs(swapped[interior].astype(int) - expected[interior].astype(int))
    assert difference.mean() < 2.0 and np.percentile(difference, 99) <= 8, difference.mean()
    x1, y1, x2, y2 = face.bbox.astype(int)
    face_changed = np.any(swapped[y1:y2, x1:x2] != image[y1:y2, x1:x2], axis=2).mean()
    assert face_changed > 0.5


def test_the_blend_mask_covers_the_hull_and_fades_out_inside_its_box(swapper, images, faces, hanks) -> None:
    # the feather straddles the hull's edge: the box must hold all of it, or the face would end in a step there
    target = swapper.target_landmarks(images["astronaut"], faces["astronaut"][0])
    points = destination_points(target, hanks.extras["points"])[: hanks.extras["points"].shape[0] - 8]
    box = mask_box(points, images["astronaut"].shape)
    assert box is not None
    weight = blend_weight(points, box)
    edges = np.concatenate([weight[0], weight[-1], weight[:, 0], weight[:, -1]])
    assert edges.max() < 0.02, edges.max()
    x1, y1 = box[:2]
    chin = np.round(points[8] - [x1, y1]).astype(int)  # on the hull's edge: half of the feather lies outside it
    assert weight[chin[1], chin[0]] > 0.3, weight[chin[1], chin[0]]
    nose = np.round(points[30] - [x1, y1]).astype(int)
    assert weight[nose[1], nose[0]] == pytest.approx(1.0)


def test_the_face_takes_the_sources_shape_and_keeps_the_targets_pose(swapper, images, faces, hanks) -> None:
    image, face = images["astronaut"], faces["astronaut"][0]
    target = swapper.target_landmarks(image, face)
    source = hanks.crop_landmarks
    shaped = destination_points(target, hanks.extras["points"])[:68]
    # pose: the eyes and nose stay where the target's are (up to the source's own proportions)
    pose_shift = np.linalg.norm(shaped[27:48].mean(axis=0) - target[27:48].mean(axis=0))
    eye_distance = float(np.linalg.norm(target[36:42].mean(axis=0) - target[42:48].mean(axis=0)))
    assert pose_shift < 0.1 * eye_distance

    # shape: after a similarity fit, the reshaped jaw and brows are much nearer the source's than the target's were
    def shape_error(points: np.ndarray) -> float:
        placed = np.c_[source, np.ones(68)] @ fit_similarity(source[27:48], points[27:48]).T
        return float(np.linalg.norm((placed - points)[np.r_[0:27]], axis=1).mean())

    assert shape_error(shaped) < 0.4 * shape_error(target), (shape_error(shaped), shape_error(target))


def test_swap_follows_a_rolled_head(swapper, landmarks, images, faces, describe, hanks) -> None:
    image, face = images["astronaut"], faces["astronaut"][0]
    rot = cv2.getRotationMatrix2D(tuple(float(v) for v in face.kps.mean(axis=0)), -25, 1.0)
    rolled = cv2.warpAffine(image, rot, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    kps = (np.c_[face.kps, np.ones(5)] @ rot.T).astype(np.float32)
    rolled_face = Face(bbox=face.bbox, kps=kps, score=1.0)
    source = describe(images["hanks"], swapper.target_landmarks(images["hanks"], faces["hanks"][0]))
    swapped = swapper.swap(rolled, [rolled_face], hanks)
    before = np.linalg.norm(describe(rolled, landmarks.from_kps(rolled, kps)) - source)
    after = np.linalg.norm(describe(swapped, landmarks.from_kps(swapped, kps)) - source)
    assert after < before - MIN_IDENTITY_GAIN, (before, after)


def test_references_that_cannot_be_a_source_are_rejected(swapper, images, faces) -> None:
    coffee = cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)  # a cup, no face
    kps = np.array([[260, 170], [340, 170], [300, 215], [268, 255], [332, 255]], np.float32)
    no_face = Face(bbox=np.array([220, 110, 380, 300], np.float32), kps=kps, score=0.9)
    with pytest.raises(ReferenceRejected, match="No clear, roughly frontal face"):
        swapper.identity(coffee, no_face)
    tiny = cv2.resize(images["astronaut"], (96, 96), interpolation=cv2.INTER_AREA)
    small_face = Face(bbox=faces["astronaut"][0].bbox * 96 / 512, kps=faces["astronaut"][0].kps * 96 / 512, score=1.0)
    with pytest.raises(ReferenceRejected, match="too small"):
        swapper.identity(tiny, small_face)
    turned = faces["t1"][1]  # looks over her shoulder
    with pytest.raises(ReferenceRejected, match="turned too far"):
        swapper.identity(images["t1"], turned)


def test_a_face_cut_by_the_frame_edge_is_swapped_inside_the_frame(swapper, images, faces, hanks) -> None:
    image, face = images["astronaut"], faces["astronaut"][0]
    left = int(face.kps[2, 0])  # the frame starts at her nose: half the face is outside
    frame = np.ascontiguousarray(image[:, left:])
    cut = Face(bbox=face.bbox - np.array([left, 0, left, 0], np.float32), kps=face.kps - [left, 0], score=1.0)
    swapped = swapper.swap(frame, [cut], hanks)
    assert swapped.shape == frame.shape
    assert np.any(swapped[:, :40] != frame[:, :40])  # the visible half changed
    ring = morph_polygon(destination_points(swapper.target_landmarks(frame, cut), hanks.extras["points"]))
    right = int(np.ceil(ring[:, 0].max())) + 2
    assert right < frame.shape[1] - 100
    assert np.array_equal(swapped[:, right:], frame[:, right:])


def test_concurrent_swaps_match_a_single_threaded_swap(swapper, images, faces, hanks) -> None:
    image = images["t1"]
    expected = swapper.swap(image, faces["t1"], hanks)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: swapper.swap(image, faces["t1"], hanks), range(8)))
    assert all(np.array_equal(result, expected) for result in results)


def test_an_identity_without_a_source_crop_is_refused(swapper, images, faces) -> None:
    foreign = SourceIdentity(backend="inswapper-128", face=faces["hanks"][0], embedding=np.ones(512, np.float32))
    with pytest.raises(ValueError, match="no source crop"):
        swapper.swap(images["astronaut"], faces["astronaut"], foreign)
