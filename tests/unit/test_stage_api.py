"""The handles API types: requests refuse bad payloads where they are built; the batching user_config is typed."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_ray.config import MirageSettings
from mirage_ray.stage_api import (
    BatchConfig,
    ConvertRequest,
    DetectRequest,
    RestoreRequest,
    SwapRequest,
)
from mirage_ray.vision.faces import Face, SourceIdentity

FACE = Face(np.zeros(4, np.float32), np.zeros((5, 2), np.float32), 0.9)
IMAGE = np.zeros((32, 32, 3), np.uint8)


def test_batch_config_defaults_come_from_settings_and_keys_left_out_keep_them() -> None:
    defaults = BatchConfig.from_settings(MirageSettings(batch_max_size=6, batch_wait_s=0.01))
    assert (defaults.max_batch_size, defaults.batch_wait_timeout_s) == (6, 0.01)
    assert BatchConfig.from_user_config({"max_batch_size": 3}, defaults) == BatchConfig(
        max_batch_size=3, batch_wait_timeout_s=0.01
    )
    assert BatchConfig.from_user_config(None, defaults) == defaults


@pytest.mark.parametrize(
    "config",
    [{"max_batch_size": 0}, {"max_batch_size": 65}, {"batch_wait_timeout_s": -0.1}, {"batch_wait_timeout_s": 0.5}],
)
def test_batch_config_out_of_range_is_refused_with_the_allowed_ranges(config: dict) -> None:
    with pytest.raises(ValueError, match=r"allowed: max_batch_size 1\.\.64, batch_wait_timeout_s 0\.0\.\.0\.1 s"):
        BatchConfig.from_user_config(config, BatchConfig.from_settings(MirageSettings()))


def test_batch_config_refuses_unknown_keys_and_non_mappings() -> None:
    defaults = BatchConfig.from_settings(MirageSettings())
    with pytest.raises(ValueError, match="max_batch"):
        BatchConfig.from_user_config({"max_batch": 4}, defaults)
    with pytest.raises(ValueError, match="must be a mapping"):
        BatchConfig.from_user_config([4], defaults)  # type: ignore[arg-type]


def test_requests_refuse_bad_payloads_before_any_hop() -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        DetectRequest(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="BGR uint8"):
        DetectRequest(IMAGE.astype(np.float32))
    with pytest.raises(ValueError, match="identity, its key, or both"):
        SwapRequest(IMAGE, (FACE,))
    with pytest.raises(ValueError, match="fidelity"):
        RestoreRequest(np.zeros((1, 512, 512, 3), np.uint8), 1.5)
    with pytest.raises(ValueError, match="float32 mono"):
        ConvertRequest(np.zeros((2, 100), np.float32))
    SwapRequest(IMAGE, (FACE,), SourceIdentity("classical", FACE))
    SwapRequest(IMAGE, (FACE,), identity_key="k")
    ConvertRequest(np.zeros(1600, np.float32))
