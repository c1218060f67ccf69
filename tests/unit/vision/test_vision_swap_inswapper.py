"""InSwapper backend on synthetic ONNX models with the real signatures, loaded through insightface's model zoo.

The synthetic swapper outputs ``(1 - MIX) * target + MIX * sigmoid(GAIN * latent[:3])``, so the colour in the swapped
face tells which latent (hence which embedding and emap) reached the model.
"""

from __future__ import annotations

import importlib.util
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper as InsightINSwapper
from insightface.utils import face_align
from skimage import data

from mirage_ray.vision.align import crop_footprint
from mirage_ray.vision.base import ReferenceRejected, Swapper
from mirage_ray.vision.faces import Face
from mirage_ray.vision.landmarks_dlib import DlibLandmarks, kps_from_landmarks
from mirage_ray.vision.swap_inswapper import (
    INSWAPPER_FP16_NAME,
    INSWAPPER_NAME,
    InSwapper,
    SwapModelError,
    align_for_swap,
    latent_for,
    output_problem,
)
from tests.synthetic.swap_onnx import MIX, arcface_model, expected_colour, inswapper_model, random_emap, save

IMAGES = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swap-models")
    return {
        "arcface": save(arcface_model(), root / "w600k_r50.onnx"),
        "fp32": save(inswapper_model(random_emap(1)), root / "inswapper_128.onnx"),
        "fp32_other_emap": save(inswapper_model(random_emap(2)), root / "inswapper_other_emap.onnx"),
        "fp32_nan": save(inswapper_model(random_emap(1), mode="nan"), root / "inswapper_nan.onnx"),
        "fp16": save(inswapper_model(random_emap(1), precision="fp16", fp16_io=True), root / "inswapper_fp16.onnx"),
        "fp16_nan": save(inswapper_model(random_emap(1), mode="nan", precision="fp16"), root / "fp16_nan.onnx"),
        "fp16_black": save(inswapper_model(random_emap(1), mode="black", precision="fp16"), root / "fp16_black.onnx"),
    }


@pytest.fixture(scope="session")
def scene() -> tuple[np.ndarray, Face, np.ndarray, Face]:
    """(astronaut image, her face, Tom Hanks image, his face): dlib HOG boxes + keypoints from the 68 landmarks."""
    detector, landmarks = dlib.get_frontal_face_detector(), DlibLandmarks()
    out = []
    for image in (cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), cv2.imread(str(IMAGES / "Tom_Hanks_54745.png"))):
        rect = max(detector(image[..., ::-1].copy(), 1), key=lambda r: r.area())
        box = (rect.left(), rect.top(), rect.right(), rect.bottom())
        kps = kps_from_landmarks(landmarks.predict(image, box))
        out += [image, Face(bbox=np.array(box, np.float32), kps=kps, score=1.0)]
    return tuple(out)


@pytest.fixture(scope="session")
def swapper(models) -> InSwapper:
    return InSwapper(models["fp32"], models["arcface"], providers=CPU)


def _outside_crop(face: Face, shape: tuple[int, ...]) -> np.ndarray:
    """Pixels the face's 128 crop cannot reach (its footprint's bounding box, one pixel of bilinear reach added)."""
    x1, y1, x2, y2 = crop_footprint(align_for_swap(np.zeros((8, 8, 3), np.uint8), face.kps)[1], 128)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (xs < x1 - 1) | (xs > x2 + 1) | (ys < y1 - 1) | (ys > y2 + 1)


def test_synthetic_models_route_to_insightfaces_classes(models) -> None:
    assert isinstance(get_model(str(models["arcface"]), providers=CPU), ArcFaceONNX)
    for key in ("fp32", "fp16", "fp16_nan"):
        model = get_model(str(models[key]), providers=CPU)
        assert isinstance(model, InsightINSwapper) and model.emap.shape == (512, 512)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # insightface's norm_crop uses a deprecated skimage call
def test_identity_is_the_normed_arcface_embedding_of_insightfaces_aligned_crop(swapper, scene) -> None:
    astronaut, her, hanks, his = scene
    identity = swapper.identity(astronaut, her)
    assert isinstance(swapper, Swapper) and identity.backend == INSWAPPER_NAME
    assert identity.embedding.shape == (512,) and np.isclose(np.linalg.norm(identity.embedding), 1.0, atol=1e-5)
    assert np.array_equal(identity.face.embedding, identity.embedding)
    reference = ArcFaceONNX(model_file=str(swapper._arcface.model_file), session=swapper._arcface.session)
    expected = reference.get_feat(face_align.norm_crop(astronaut, her.kps, 112)).reshape(-1)
    expected /= np.linalg.norm(expected)
    assert float(expected @ identity.embedding) > 0.999
    other = swapper.identity(hanks, his).embedding
    assert float(other @ identity.embedding) < 0.99


def test_swap_changes_the_face_and_nothing_outside_its_crop(swapper, scene) -> None:
    astronaut, her, hanks, his = scene
    identity = swapper.identity(hanks, his)
    before = astronaut.copy()
    swapped = swapper.swap(astronaut, [her], identity)
    assert np.array_equal(astronaut, before), "the input frame was modified"
    outside = _outside_crop(her, astronaut.shape)
    assert np.array_equal(swapped[outside], astronaut[outside])
    x1, y1, x2, _ = np.round(her.bbox).astype(int)  # the whole crop goes back: skin outside the box changes too
    assert not np.array_equal(swapped[y1 - 8 : y1, x1:x2], astronaut[y1 - 8 : y1, x1:x2])
    x, y = np.round(her.kps[2]).astype(int)  # the nose: full mask weight there
    patch = (slice(y - 3, y + 4), slice(x - 3, x + 4))
    colour_bgr = expected_colour(identity.embedding, random_emap(1))[::-1] * 255.0
    expected = (1 - MIX) * astronaut[patch].astype(np.float64) + MIX * colour_bgr
    assert np.abs(swapped[patch] - expected).mean() < 2.0
    assert np.abs(swapped[patch].astype(int) - astronaut[patch]).mean() > 10


def test_the_latent_goes_through_emap(models, swapper, scene) -> None:
    astronaut, her, hanks, his = scene
    identity = swapper.identity(hanks, his)
    other = InSwapper(models["fp32_other_emap"], models["arcface"], providers=CPU)
    x, y = np.round(her.kps[2]).astype(int)
    pixel_a = swapper.swap(astronaut, [her], identity)[y, x].astype(float)
    pixel_b = other.swap(astronaut, [her], identity)[y, x].astype(float)
    for pixel, emap in ((pixel_a, random_emap(1)), (pixel_b, random_emap(2))):
        colour = expected_colour(identity.embedding, emap)[::-1] * 255.0
        assert np.abs(pixel - ((1 - MIX) * astronaut[y, x] + MIX * colour)).max() < 2.5
    assert np.abs(pixel_a - pixel_b).max() > 10
    latent = latent_for(identity.embedding, random_emap(1))
    assert latent.shape == (1, 512) and np.isclose(np.linalg.norm(latent), 1.0)


def test_two_faces_are_swapped_each_under_its_own_crop(swapper, scene) -> None:
    astronaut, her, hanks, his = scene
    frame = np.concatenate([astronaut, astronaut], axis=1)
    shift = np.float32(512)
    twin = Face(bbox=her.bbox + np.array([shift, 0, shift, 0]), kps=her.kps + np.array([shift, 0]), score=1.0)
    swapped = swapper.swap(frame, [her, twin], swapper.identity(hanks, his))
    outside = _outside_crop(her, frame.shape) & _outside_crop(twin, frame.shape)
    assert np.array_equal(swapped[outside], frame[outside])
    assert np.abs(swapped[:, :512].astype(int) - swapped[:, 512:]).max() <= 2  # the same swap, shifted


def test_fp16_output_with_nan_falls_back_to_the_fp32_file(models, swapper, scene, caplog) -> None:
    astronaut, her, hanks, his = scene
    fp16 = InSwapper(models["fp16_nan"], models["arcface"], CPU, precision="fp16", fp32_fallback_path=models["fp32"])
    identity = fp16.identity(hanks, his)
    assert fp16.name == INSWAPPER_FP16_NAME and fp16.degraded_reason is None
    with caplog.at_level(logging.WARNING, logger="mirage_ray.vision.swap_inswapper"):
        first = fp16.swap(astronaut, [her], identity)
    assert np.array_equal(first, swapper.swap(astronaut, [her], identity))
    assert "NaN" in fp16.degraded_reason and fp16.sanity_failures == 1 and fp16.unswapped_faces == 0
    assert any("sanity" in record.message for record in caplog.records)
    second = fp16.swap(astronaut, [her], identity)  # the fallback is now used directly
    assert np.array_equal(second, first) and fp16.sanity_failures == 1


def test_bad_output_without_a_fallback_leaves_the_face_unswapped(models, scene) -> None:
    astronaut, her, hanks, his = scene
    for key, precision in (("fp16_black", "fp16"), ("fp32_nan", "fp32")):
        broken = InSwapper(models[key], models["arcface"], CPU, precision=precision)
        identity = broken.identity(hanks, his)
        assert np.array_equal(broken.swap(astronaut, [her], identity), astronaut)
        assert broken.unswapped_faces == 1 and broken.sanity_failures == 1 and broken.degraded_reason is None


def test_fp16_inputs_are_fed_as_float16(models, swapper, scene) -> None:
    astronaut, her, hanks, his = scene
    fp16 = InSwapper(models["fp16"], models["arcface"], CPU, precision="fp16")
    identity = fp16.identity(hanks, his)
    difference = fp16.swap(astronaut, [her], identity).astype(int) - swapper.swap(astronaut, [her], identity)
    assert np.abs(difference).max() <= 2 and fp16.sanity_failures == 0


def test_output_sanity_check() -> None:
    rng = np.random.default_rng(0)
    good = rng.uniform(0, 1, (1, 3, 128, 128)).astype(np.float32)
    assert output_problem(good) is None
    assert "NaN" in output_problem(np.where(good > 0.99, np.nan, good))
    assert "black" in output_problem(good * 0.01)
    assert "constant" in output_problem(np.full_like(good, 0.5))
    assert "outside" in output_problem(good * 3.0)


def test_wrong_or_missing_files_are_refused(models, tmp_path) -> None:
    with pytest.raises(SwapModelError, match="INSwapper signature"):
        InSwapper(models["arcface"], models["arcface"], CPU)
    with pytest.raises(SwapModelError, match="ArcFaceONNX signature"):
        InSwapper(models["fp32"], models["fp32"], CPU)
    with pytest.raises(FileNotFoundError, match="mirage-ray models fetch"):
        InSwapper(tmp_path / "inswapper_128.onnx", models["arcface"], CPU)
    with pytest.raises(FileNotFoundError, match="fp32 fallback"):
        InSwapper(models["fp16"], models["arcface"], CPU, "fp16", fp32_fallback_path=tmp_path / "inswapper_128.onnx")
    with pytest.raises(ValueError, match="precision"):
        InSwapper(models["fp32"], models["arcface"], CPU, precision="int8")


def test_a_ready_session_can_be_injected(models, scene) -> None:
    import onnxruntime

    astronaut, her, hanks, his = scene
    session = onnxruntime.InferenceSession(str(models["fp32"]), providers=CPU)
    injected = InSwapper(models["fp32"], models["arcface"], CPU, inswapper_session=session)
    identity = injected.identity(hanks, his)
    assert not np.array_equal(injected.swap(astronaut, [her], identity), astronaut)


def test_small_reference_faces_are_rejected(swapper, scene) -> None:
    astronaut, her, _, _ = scene
    tiny = cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA)
    small = Face(bbox=her.bbox * 96 / 512, kps=her.kps * 96 / 512, score=1.0)
    with pytest.raises(ReferenceRejected, match="too small"):
        swapper.identity(tiny, small)


def test_concurrent_swaps_match_a_single_threaded_swap(swapper, scene) -> None:
    astronaut, her, hanks, his = scene
    identity = swapper.identity(hanks, his)
    expected = swapper.swap(astronaut, [her], identity)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: swapper.swap(astronaut, [her], identity), range(8)))
    assert all(np.array_equal(result, expected) for result in results)
