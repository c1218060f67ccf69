"""``mirage-ray client``: one session from the command line, file-to-file or live devices."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from mirage_ray.client.devices import LiveOptions, run_live
from mirage_ray.client.extras import ClientError
from mirage_ray.client.files import FileRunOptions, FileRunReport, run_file
from mirage_ray.client.token import resolve_token
from mirage_ray.client.wire import MirageConnection

logger = logging.getLogger(__name__)

REFERENCE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ClientOptions:
    url: str
    token: str | None
    reference: Path | None
    settings: dict[str, Any]
    file: FileRunOptions | None  # None: live devices
    live: LiveOptions
    report: Path | None = None


def read_reference(path: Path) -> bytes:
    """The reference photo's bytes (JPEG or PNG as the protocol takes; other formats converted to PNG)."""
    if not path.is_file():
        raise ClientError(f"reference photo not found: {path}")
    if path.suffix.lower() in REFERENCE_SUFFIXES:
        return path.read_bytes()
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ClientError(f"{path} is not an image OpenCV can read: use a JPEG or PNG")
    return cv2.imencode(".png", image)[1].tobytes()


def summary(report: FileRunReport) -> str:
    swapped = report.frames_returned - report.frames_passthrough
    return (
        f"frames: {report.frames_in} sent, {swapped} swapped, {report.frames_passthrough} not swapped, "
        f"{report.frames_held} held; audio: {report.samples_returned}/{report.samples_sent} samples back "
        f"({report.audio_passthrough} of {report.audio_replies} blocks through the fallback); "
        f"{'complete' if report.complete else 'INCOMPLETE'} in {report.seconds:.1f} s"
    )


async def run(options: ClientOptions) -> int:
    token = resolve_token(options.url, options.token)
    reference = read_reference(options.reference) if options.reference else None
    if options.file is not None:
        report = await run_file(options.url, token, options.file, reference, options.settings)
        if options.report is not None:
            options.report.write_text(json.dumps(report.as_json(), indent=2))
        outputs = ", ".join(p for p in (report.output_video, report.output_audio) if p)
        print(f"{summary(report)}\nwrote {outputs}", flush=True)
        return 0 if report.complete else 1
    connection = await MirageConnection.open(options.url, token)
    try:
        if reference is not None:
            await connection.set_reference(reference)
        if options.settings:
            await connection.apply_settings(**options.settings)
        print(f"connected to {options.url} (session {connection.hello.get('session_id')}); Ctrl-C stops", flush=True)
        await run_live(connection, options.live)
    finally:
        await connection.close()
    return 0


def main(options: ClientOptions) -> int:
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return 0
