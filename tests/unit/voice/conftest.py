"""Fixtures the voice tests share: real speech, and the embedded WORLD converter."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_ray.voice.convert_world import WorldConverter
from tests.speech import speech


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return speech()


@pytest.fixture(scope="module")
def world() -> WorldConverter:
    return WorldConverter()
