"""Media codecs: JPEG/PNG <-> BGR ndarray (with a dimension cap checked before decoding), PCM16 <-> float32."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import simplejpeg

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IHDR = struct.Struct(">II")  # width, height right after the IHDR tag
PCM16_SCALE = 32768.0


class CodecError(ValueError):
    """The payload is not a decodable image/PCM within limits; the message says why."""


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the JPEG or PNG header without decoding the pixels."""
    if data[:8] == PNG_SIGNATURE and len(data) >= 24:
        width, height = PNG_IHDR.unpack_from(data, 16)
        return int(width), int(height)
    if data[:2] == b"\xff\xd8":
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise CodecError(f"not a valid JPEG: {exc}") from None
        return int(width), int(height)
    raise CodecError("not a JPEG or PNG image")


def checked_image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header, refused (CodecError) when zero or above ``max_pixels``: the dimension cap."""
    width, height = image_size(data)
    if width <= 0 or height <= 0:
        raise CodecError("image has zero size")
    if width * height > max_pixels:
        raise CodecError(f"image {width}x{height} exceeds the limit of {max_pixels} pixels")
    return width, height


def decode_image(data: bytes, max_pixels: int, max_side: int | None = None) -> np.ndarray:
    """BGR uint8 image from JPEG/PNG bytes; refuses images above ``max_pixels`` before decoding.

    ``max_side`` optionally downsizes (keeping aspect) so the longest side is at most that many pixels.
    """
    checked_image_size(data, max_pixels)
    if data[:2] == b"\xff\xd8":
        try:
            image = simplejpeg.decode_jpeg(data, colorspace="BGR")
        except ValueError as exc:
            raise CodecError(f"JPEG decode failed: {exc}") from None
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise CodecError("PNG decode failed")
    if max_side is not None and max(image.shape[:2]) > max_side:
        image = resize_max_side(image, max_side)
    return image


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downsize so the longest side is ``max_side`` (never upsizes)."""
    height, width = image.shape[:2]
    scale = max_side / float(max(height, width))
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR uint8 image."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=int(quality), colorspace="BGR")


def pcm16_to_float(data: bytes) -> np.ndarray:
    """float32 samples in [-1, 1) from little-endian PCM16 bytes."""
    if len(data) % 2:
        raise CodecError("PCM16 payload has an odd number of bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_SCALE


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Little-endian PCM16 bytes from float samples (clipped to [-1, 1))."""
    scaled = np.clip(np.round(np.asarray(samples, np.float64) * PCM16_SCALE), -32768, 32767)
    return scaled.astype("<i2").tobytes()
