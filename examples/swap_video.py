"""Swap the faces of a video (or a folder of frames) offline through a running Mirage app's deployments.

A Ray driver that calls the Detector and Swapper deployments through their handles (docs/handles.md)::

    python examples/swap_video.py --address 127.0.0.1:6379 --reference me.png --input in.mp4 --output out.mp4

``--input`` is a video file or a folder of images (sorted by name); ``--output`` is a video file (same frame rate;
``.avi`` is written as MJPG, anything else as mp4v) or a folder (PNG, same names). Frames go in windows of
``--in-flight``: every request of a window is sent before any answer is awaited, so frames batch at the deployments.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from mirage_ray.reference import choose_reference_face
from mirage_ray.stage_api import DetectRequest, IdentityMiss, IdentityRequest, SwapRequest
from mirage_ray.vision.faces import SourceIdentity, largest_faces

logger = logging.getLogger("swap_video")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_FPS = 25.0  # when the input is a folder of frames


class VideoSwapper:
    """Detect and swap frames through the deployments, the identity sent in full only until a replica holds it."""

    def __init__(self, detector: DeploymentHandle, swapper: DeploymentHandle, max_faces: int) -> None:
        self._detector = detector
        self._swapper = swapper
        self._max_faces = max_faces
        self._key = uuid.uuid4().hex
        self._identity: SourceIdentity | None = None
        self._identity_sent = False

    def set_reference(self, image: np.ndarray) -> None:
        """The identity of the reference photo's face (the same choice the live session makes)."""
        faces = self._detector.detect.remote(DetectRequest(image)).result().faces
        face = choose_reference_face(list(faces))
        self._identity = self._swapper.identity.remote(IdentityRequest(image, face)).result().identity

    def swap(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """The frames with their largest faces swapped; every request of the window in flight together."""
        if self._identity is None:
            raise RuntimeError("set_reference first")
        detections = [self._detector.detect.remote(DetectRequest(frame)) for frame in frames]
        faces = [largest_faces(list(d.result().faces), self._max_faces) for d in detections]
        identity = None if self._identity_sent else self._identity
        calls = {
            i: self._swapper.swap.remote(SwapRequest(frame, tuple(found), identity, self._key))
            for i, (frame, found) in enumerate(zip(frames, faces, strict=True))
            if found
        }
        out = list(frames)
        for i, call in calls.items():
            reply = call.result()
            if isinstance(reply, IdentityMiss):  # a replica that does not hold it (new, or evicted): send it in full
                request = SwapRequest(frames[i], tuple(faces[i]), self._identity, self._key)
                reply = self._swapper.swap.remote(request).result()
            out[i] = reply.image
        self._identity_sent = True
        return out


def read_frames(source: Path) -> tuple[Iterator[tuple[str, np.ndarray]], float]:
    """(name, BGR frame) pairs of a video file or a folder of images, and the frame rate."""
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return ((p.name, cv2.imread(str(p), cv2.IMREAD_COLOR)) for p in paths), DEFAULT_FPS
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise SystemExit(f"cannot open video {source}")
    fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS

    def frames() -> Iterator[tuple[str, np.ndarray]]:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                capture.release()
                return
            yield f"{index:06d}.png", frame
            index += 1

    return frames(), fps


class FrameWriter:
    """Writes frames to a video file or, for a path without a video suffix, to a folder of PNGs."""

    def __init__(self, target: Path, fps: float) -> None:
        self._target = target
        self._fps = fps
        self._video: cv2.VideoWriter | None = None
        self._to_folder = target.suffix == ""
        if self._to_folder:
            target.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, frame: np.ndarray) -> None:
        if self._to_folder:
            cv2.imwrite(str(self._target / name), frame)
            return
        if self._video is None:
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self._target.suffix.lower() == ".avi" else "mp4v"))
            height, width = frame.shape[:2]
            self._video = cv2.VideoWriter(str(self._target), fourcc, self._fps, (width, height))
            if not self._video.isOpened():
                raise SystemExit(f"cannot write video {self._target}")
        self._video.write(frame)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="auto", help="the Ray cluster the app runs on (host:port, or auto)")
    parser.add_argument("--app", default="mirage", help="the Serve application's name")
    parser.add_argument("--reference", type=Path, required=True, help="a photo of the face to become")
    parser.add_argument("--input", type=Path, required=True, help="a video file or a folder of images")
    parser.add_argument("--output", type=Path, required=True, help="a video file, or a folder for PNG frames")
    parser.add_argument("--max-faces", type=int, default=1, help="swap the N largest faces of each frame")
    parser.add_argument("--in-flight", type=int, default=8, help="frames sent together (they batch)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    reference = cv2.imread(str(args.reference), cv2.IMREAD_COLOR)
    if reference is None:
        raise SystemExit(f"cannot read the reference photo {args.reference}")
    ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING)
    swapper = VideoSwapper(
        serve.get_deployment_handle("Detector", app_name=args.app),
        serve.get_deployment_handle("Swapper", app_name=args.app),
        args.max_faces,
    )
    swapper.set_reference(reference)
    frames, fps = read_frames(args.input)
    writer = FrameWriter(args.output, fps)
    count = 0
    try:
        window: list[tuple[str, np.ndarray]] = []
        for item in frames:
            window.append(item)
            if len(window) == args.in_flight:
                count += _flush(swapper, writer, window)
        count += _flush(swapper, writer, window)
    finally:
        writer.close()
    logger.info("swapped %d frames into %s", count, args.output)
    return 0


def _flush(swapper: VideoSwapper, writer: FrameWriter, window: list[tuple[str, np.ndarray]]) -> int:
    if not window:
        return 0
    for (name, _), frame in zip(window, swapper.swap([frame for _, frame in window]), strict=True):
        writer.write(name, frame)
    count = len(window)
    window.clear()
    return count


if __name__ == "__main__":
    raise SystemExit(main())
