"""InSwapper geometry: what the model sees is insightface's ``norm_crop``, and what comes back lands where it came from.

Synthetic swappers with the real signature (``tests/synthetic/swap_onnx.py``): an identity model (output = input) must
leave every frame as it was, inside and outside the face, and a pattern model (a fixed image in crop coordinates)
must land in the frame exactly where insightface's own ``INSwapper.get(..., paste_back=True)`` puts it.

The frames are a moving, rolling, zooming face, smoothed (Gaussian sigma ``SMOOTH_SIGMA_PX``): the 128 crop resamples
the face twice (frame -> crop -> frame), which blurs fine detail the same way in the reference, so the identity check
holds to float tolerance only on a smooth image. On these frames a half-pixel misplacement moves pixels by ~15 levels.
The swapper gets what the session sends it: the region around the face, in that region's coordinates.
"""

from __future__ import annotations

import types
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pytest
from insightface.model_zoo import get_model
from insightface.utils import face_align

from mirage_ray.vision.align import crop_footprint
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.faces import Face, SourceIdentity, face_region, translate
from mirage_ray.vision.swap_inswapper import (
    CONTEXT_MARGIN,
    INSWAPPER_NAME,
    SWAP_CROP_PX,
    InSwapper,
    align_for_swap,
    paste_swapped,
)
from tests.media import astronaut
from tests.synthetic.swap_onnx import arcface_model, crop_pattern, geometry_swapper_model, save

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # insightface's estimate_norm: deprecated skimage call

CPU = ["CPUExecutionProvider"]
FRAME_W, FRAME_H = 640, 480
SMOOTH_SIGMA_PX = 2.5
# (roll degrees, scale, face centre x, y) of each frame: a head moving, rolling and coming closer
POSES = [(0, 1.0, 320, 240), (12, 1.1, 300, 230), (-25, 0.8, 200, 200), (35, 1.3, 400, 260), (-8, 0.65, 480, 150)]
EDGE_POSES = [(10, 1.2, 60, 240), (-20, 1.0, 600, 420)]  # faces partly out of the frame
IDENTITY_MAX_LEVELS = 4  # |output - input| after the frame -> crop -> frame round trip on the smooth frames
REFERENCE_MAX_LEVELS = 2  # |ours - insightface's paste-back| (float32 vs float64 warp matrices, rounding)
CROP_MAX_LEVELS = 1


class RecordingSession:
    """An onnxruntime session that keeps every feed it runs (what reached the model)."""

    def __init__(self, path: Path) -> None:
        self._session = onnxruntime.InferenceSession(str(path), providers=CPU)
        self.feeds: list[dict[str, np.ndarray]] = []

    def get_inputs(self):
        return self._session.get_inputs()

    def get_outputs(self):
        return self._session.get_outputs()

    def run(self, output_names, feeds):
        self.feeds.append({name: np.array(value) for name, value in feeds.items()})
        return self._session.run(output_names, feeds)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("geometry-models")
    return {
        "arcface": save(arcface_model(), root / "w600k_r50.onnx"),
        "identity": save(geometry_swapper_model("identity"), root / "inswapper_identity.onnx"),
        "pattern": save(geometry_swapper_model("pattern"), root / "inswapper_pattern.onnx"),
    }


@pytest.fixture(scope="module")
def source() -> SourceIdentity:
    embedding = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    embedding /= np.linalg.norm(embedding)
    face = Face(bbox=np.zeros(4, np.float32), kps=np.zeros((5, 2), np.float32), score=1.0)
    return SourceIdentity(backend=INSWAPPER_NAME, face=face, embedding=embedding)


@pytest.fixture(scope="module")
def base_face() -> Face:
    return max(RetinaFaceDetector().detect(astronaut()), key=lambda face: face.area)


def _frame(base_face: Face, roll: float, scale: float, centre_x: float, centre_y: float) -> tuple[np.ndarray, Face]:
    """The astronaut moved so her face (rolled, scaled) is centred at (centre_x, centre_y); smoothed; and that face."""
    centre = base_face.kps.mean(axis=0)
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), roll, scale)
    matrix[:, 2] += (centre_x - centre[0], centre_y - centre[1])
    frame = cv2.warpAffine(astronaut(), matrix, (FRAME_W, FRAME_H), borderMode=cv2.BORDER_REFLECT)
    frame = cv2.GaussianBlur(frame, (0, 0), SMOOTH_SIGMA_PX)
    x1, y1, x2, y2 = base_face.bbox
    corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]], np.float32) @ matrix.T
    box = np.array([*corners.min(axis=0), *corners.max(axis=0)], np.float32)
    kps = (np.hstack([base_face.kps, np.ones((5, 1), np.float32)]) @ matrix.T).astype(np.float32)
    return frame, Face(bbox=box, kps=kps, score=1.0)


def _swap_region(swapper: InSwapper, frame: np.ndarray, face: Face, identity: SourceIdentity) -> np.ndarray:
    """What the session does: only the region around the face travels, in the region's coordinates."""
    x1, y1, x2, y2 = face_region([face], frame.shape[1], frame.shape[0], CONTEXT_MARGIN)
    swapped = swapper.swap(np.ascontiguousarray(frame[y1:y2, x1:x2]), [translate(face, -x1, -y1)], identity)
    output = frame.copy()
    output[y1:y2, x1:x2] = swapped
    return output


def _insightface_paste(model_path: Path, frame: np.ndarray, face: Face, identity: SourceIdentity) -> np.ndarray:
    reference = get_model(str(model_path), providers=CPU)
    source = types.SimpleNamespace(normed_embedding=identity.embedding)
    return reference.get(frame, types.SimpleNamespace(kps=face.kps), source, paste_back=True)


@pytest.mark.parametrize("pose", POSES, ids=[f"roll{p[0]}-x{p[1]}" for p in POSES])
def test_identity_model_leaves_every_frame_unchanged(models, source, base_face, pose) -> None:
    frame, face = _frame(base_face, *pose)
    swapper = InSwapper(models["identity"], models["arcface"], CPU)
    output = _swap_region(swapper, frame, face, source)
    difference = np.abs(output.astype(int) - frame)
    assert difference.max() <= IDENTITY_MAX_LEVELS, f"max {difference.max()} levels"
    assert difference.mean() < 0.05
    x1, y1, x2, y2 = np.round(face.bbox).astype(int)  # the face itself went through the model
    assert swapper.unswapped_faces == 0 and difference[y1:y2, x1:x2].max() <= IDENTITY_MAX_LEVELS


@pytest.mark.parametrize("pose", POSES + EDGE_POSES, ids=[f"roll{p[0]}-at{p[2]},{p[3]}" for p in POSES + EDGE_POSES])
def test_the_model_sees_insightfaces_norm_crop(models, source, base_face, pose) -> None:
    frame, face = _frame(base_face, *pose)
    recorder = RecordingSession(models["identity"])
    swapper = InSwapper(models["identity"], models["arcface"], CPU, inswapper_session=recorder)
    _swap_region(swapper, frame, face, source)
    (feeds,) = recorder.feeds
    target = feeds["target"]
    assert target.shape == (1, 3, SWAP_CROP_PX, SWAP_CROP_PX) and target.dtype == np.float32
    latent = source.embedding @ swapper._model.emap
    assert np.allclose(feeds["source"], latent / np.linalg.norm(latent), atol=1e-6)
    seen_bgr = np.rint(target[0].transpose(1, 2, 0)[..., ::-1] * 255.0).astype(int)
    expected = face_align.norm_crop(frame, face.kps, SWAP_CROP_PX).astype(int)
    difference = np.abs(seen_bgr - expected)
    assert difference.max() <= CROP_MAX_LEVELS and (difference > 0).mean() < 0.01


@pytest.mark.parametrize("pose", POSES + EDGE_POSES, ids=[f"roll{p[0]}-at{p[2]},{p[3]}" for p in POSES + EDGE_POSES])
def test_pattern_lands_where_insightface_pastes_it(models, source, base_face, pose) -> None:
    frame, face = _frame(base_face, *pose)
    swapper = InSwapper(models["pattern"], models["arcface"], CPU)
    ours = swapper.swap(frame, [face], source)
    reference = _insightface_paste(models["pattern"], frame, face, source)
    difference = np.abs(ours.astype(int) - reference)
    assert difference.max() <= REFERENCE_MAX_LEVELS, f"max {difference.max()} levels"
    assert np.abs(ours.astype(int) - frame).max() > 100  # the pattern really went in
    region_swap = _swap_region(swapper, frame, face, source)  # bbox-local = whole frame
    assert np.abs(region_swap.astype(int) - ours).max() <= 1


def test_pattern_comes_back_unflipped_and_in_channel_order(models, source, base_face) -> None:
    frame, face = _frame(base_face, 0, 1.0, 320, 240)
    swapper = InSwapper(models["pattern"], models["arcface"], CPU)
    output = swapper.swap(frame, [face], source)
    _, matrix = align_for_swap(frame, face.kps)
    inverse = cv2.invertAffineTransform(matrix)
    pattern_bgr = crop_pattern()[0].transpose(1, 2, 0)[..., ::-1] * 255.0
    for u, v in ((40, 40), (88, 40), (64, 64), (40, 88), (88, 88)):  # well inside the mask
        x, y = np.rint(inverse @ np.array([u, v, 1.0])).astype(int)
        u_back, v_back = matrix @ np.array([x, y, 1.0])
        expected = cv2.getRectSubPix(pattern_bgr.astype(np.float32), (1, 1), (float(u_back), float(v_back)))[0, 0]
        assert np.abs(output[y, x] - expected).max() <= 2, (u, v)


def test_a_half_pixel_paste_error_would_be_caught(models, source, base_face) -> None:
    frame, face = _frame(base_face, 12, 1.1, 300, 230)
    crop, matrix = align_for_swap(frame, face.kps)
    shifted = matrix.copy()
    shifted[:, 2] += 0.5
    assert np.abs(paste_swapped(frame, crop, matrix).astype(int) - frame).max() <= IDENTITY_MAX_LEVELS
    assert np.abs(paste_swapped(frame, crop, shifted).astype(int) - frame).max() > 3 * IDENTITY_MAX_LEVELS


@pytest.mark.parametrize("pose", POSES, ids=[f"roll{p[0]}-x{p[1]}" for p in POSES])
def test_context_margin_holds_the_whole_crop(base_face, pose) -> None:
    _, face = _frame(base_face, *pose)
    size = max(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1])
    grown = face.bbox + CONTEXT_MARGIN * size * np.array([-1, -1, 1, 1], np.float32)
    _, matrix = align_for_swap(np.zeros((8, 8, 3), np.uint8), face.kps)
    footprint = crop_footprint(matrix, SWAP_CROP_PX)
    assert np.all(footprint[:2] >= grown[:2]) and np.all(footprint[2:] <= grown[2:])


def test_the_session_sends_the_swapper_enough_context() -> None:
    from mirage_ray.stages import StageInfo, swap_margin

    # the swapper declares the context it needs; its deployment reports it; the session's StageInfo carries it
    info = StageInfo.from_report({"swapper": {"context_margin": swap_margin(InSwapper)}}, "pitch-shift")
    assert info.swap_margin >= CONTEXT_MARGIN, (
        f"the session would send a region grown by {info.swap_margin} < InSwapper's CONTEXT_MARGIN {CONTEXT_MARGIN}:"
        " the 128 crop would see zeros past the region's edge and its paste-back would be cut off there"
    )
