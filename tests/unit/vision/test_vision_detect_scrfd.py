"""SCRFD-10G wrapper through insightface's real SCRFD class, on a synthetic ONNX with det_10g's signature."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from mirage_ray.vision.base import Detector
from mirage_ray.vision.detect_retinaface import embedded_model_bytes
from mirage_ray.vision.detect_scrfd import ScrfdDetector
from tests.synthetic.scrfd_onnx import build_scrfd_onnx, expected_face, face_score, white_block_image

# A white 32 px block whose top-left corner is at (224, 160) in detector-input pixels fires the stride-32 anchor
# centred there.
CENTER_X, CENTER_Y = 224, 160


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("scrfd") / "det_10g.onnx"
    path.write_bytes(build_scrfd_onnx())
    return str(path)


@pytest.fixture(scope="module")
def detector(model_path) -> ScrfdDetector:
    return ScrfdDetector(model_path, threads=1)


def _assert_face(faces, scale: float) -> None:
    assert len(faces) == 1
    box, kps = expected_face(CENTER_X, CENTER_Y, scale)
    np.testing.assert_allclose(faces[0].bbox, box, atol=1e-3)
    np.testing.assert_allclose(faces[0].kps, kps, atol=1e-3)
    assert faces[0].bbox.dtype == np.float32 and faces[0].kps.dtype == np.float32


def test_is_a_detector_that_insightface_routes_as_scrfd(model_path, detector):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.scrfd import SCRFD

    assert isinstance(detector, Detector) and detector.name == "scrfd-10g"
    assert isinstance(get_model(model_path, providers=["CPUExecutionProvider"]), SCRFD)


def test_decodes_the_known_face_at_full_scale(detector):
    faces = detector.detect(white_block_image(640, 480, CENTER_X, CENTER_Y, 32))
    _assert_face(faces, scale=1.0)
    assert faces[0].score == pytest.approx(face_score(), abs=1e-4)


def test_letterbox_maps_back_to_frame_coordinates(detector):
    # a 1280x960 frame is letterboxed at scale 0.5 into the 640 square: the 64 px block lands on the same cell
    faces = detector.detect(white_block_image(1280, 960, 2 * CENTER_X, 2 * CENTER_Y, 64))
    _assert_face(faces, scale=0.5)


def test_det_size_sets_the_letterbox(model_path):
    small = ScrfdDetector(model_path, det_size=320, threads=1)
    faces = small.detect(white_block_image(640, 480, 2 * CENTER_X, 2 * CENTER_Y, 64))
    _assert_face(faces, scale=0.5)


def test_moving_the_block_moves_the_face(detector):
    faces = detector.detect(white_block_image(640, 480, CENTER_X + 64, CENTER_Y - 32, 32))
    box, _ = expected_face(CENTER_X + 64, CENTER_Y - 32)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].bbox, box, atol=1e-3)


def test_no_face_and_threshold(model_path, detector):
    assert detector.detect(np.zeros((480, 640, 3), np.uint8)) == []
    strict = ScrfdDetector(model_path, score_threshold=0.99, threads=1)
    assert strict.detect(white_block_image(640, 480, CENTER_X, CENTER_Y, 32)) == []


def test_two_blocks_give_two_faces_best_first(detector):
    image = white_block_image(640, 480, CENTER_X, CENTER_Y, 32)
    image[320:352, 448:480] = 200  # a dimmer block: lower score
    faces = detector.detect(image)
    assert len(faces) == 2
    assert faces[0].score > faces[1].score > 0.5
    np.testing.assert_allclose(faces[0].bbox, expected_face(CENTER_X, CENTER_Y)[0], atol=1e-3)
    np.testing.assert_allclose(faces[1].bbox, expected_face(448, 320)[0], atol=1e-3)


def test_accepts_a_ready_session(model_path):
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    faces = ScrfdDetector(session).detect(white_block_image(640, 480, CENTER_X, CENTER_Y, 32))
    _assert_face(faces, scale=1.0)


def test_missing_file_says_where_and_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"det_10g\.onnx.*mirage-ray models fetch"):
        ScrfdDetector(tmp_path / "det_10g.onnx")


def test_refuses_a_model_without_scrfd_outputs():
    session = ort.InferenceSession(embedded_model_bytes(), providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="9 outputs"):
        ScrfdDetector(session)


def test_refuses_bad_det_size(model_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        ScrfdDetector(model_path, det_size=500)
