"""Codecs: JPEG/PNG decode with a dimension cap checked before decoding, PCM16 round trips."""

import cv2
import numpy as np
import pytest

from mirage_ray.codec import (
    CodecError,
    decode_image,
    encode_jpeg,
    float_to_pcm16,
    image_size,
    pcm16_to_float,
    resize_max_side,
)


def test_jpeg_round_trip_keeps_the_picture() -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)  # blue in BGR
    data = encode_jpeg(image, 90)
    assert image_size(data) == (64, 48)
    decoded = decode_image(data, max_pixels=10_000)
    assert decoded.shape == (48, 64, 3)
    assert decoded[24, 10, 0] > 200 and decoded[24, 10, 2] < 50


def test_png_and_dimension_cap() -> None:
    ok, png = cv2.imencode(".png", np.full((100, 200, 3), 7, np.uint8))
    assert ok
    assert image_size(png.tobytes()) == (200, 100)
    assert decode_image(png.tobytes(), max_pixels=20_000).shape == (100, 200, 3)
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode_image(png.tobytes(), max_pixels=19_999)


@pytest.mark.parametrize("data", [b"", b"hello", b"\xff\xd8\xff\x00garbage", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30])
def test_garbage_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_image(data, max_pixels=1_000_000)


def test_resize_max_side_never_upsizes() -> None:
    image = np.zeros((512, 256, 3), np.uint8)
    assert resize_max_side(image, 384).shape == (384, 192, 3)
    assert resize_max_side(image, 1024) is image


def test_pcm16_round_trip_and_clipping() -> None:
    samples = np.array([0.0, 0.5, -0.5, 0.999, -1.0], np.float32)
    back = pcm16_to_float(float_to_pcm16(samples))
    assert np.allclose(back, samples, atol=1 / 32768)
    assert pcm16_to_float(float_to_pcm16(np.array([2.0, -2.0]))).tolist() == [32767 / 32768, -1.0]
    with pytest.raises(CodecError):
        pcm16_to_float(b"\x00\x01\x02")
