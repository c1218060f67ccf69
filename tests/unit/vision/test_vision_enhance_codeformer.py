"""CodeFormer enhancer (and the 'none' enhancer) on the real architecture with random weights.

The official codeformer.pth cannot be downloaded here, so the checkpoint is this module's own random init saved in
the official layout ({"params_ema": state_dict}); parameter names, shapes and count are checked against facts
read from sczhou/CodeFormer (basicsr/archs/codeformer_arch.py, vqgan_arch.py) and the release file's size.
A CPU forward at 512 px takes seconds, so the module fixture runs exactly three.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from mirage_ray.vision.base import Enhancer
from mirage_ray.vision.codeformer_arch import CodeFormer
from mirage_ray.vision.enhance_codeformer import CodeFormerEnhancer, CodeFormerWeightsError
from mirage_ray.vision.enhance_none import NoEnhancer

FIDELITY = 0.75
# Release v0.1.0 codeformer.pth: 376,637,898 bytes
# (sha256 1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7).
OFFICIAL_FILE_BYTES = 376_637_898
# Parameter count of the reference CodeFormer(dim_embd=512, n_head=8, n_layers=9, connect_list 32..256); at 4 bytes
# each it leaves ~187 kB of the official file for zip/pickle overhead of 515 tensors.
OFFICIAL_PARAM_COUNT = 94_112_707
OFFICIAL_TENSOR_COUNT = 515
# Saving the same tensors with this torch gives a file within a few kB of the official one; one conv layer more or
# less (>= 36,864 params at 64 channels, 147 kB) would not fit in this tolerance.
FILE_SIZE_TOLERANCE_BYTES = 32 * 1024

# Official state-dict names (reference code: module attribute paths) and their shapes.
OFFICIAL_KEY_SHAPES = {
    "position_emb": (256, 512),
    "feat_emb.weight": (512, 256),
    "feat_emb.bias": (512,),
    "ft_layers.0.self_attn.in_proj_weight": (1536, 512),
    "ft_layers.0.self_attn.in_proj_bias": (1536,),
    "ft_layers.8.self_attn.out_proj.weight": (512, 512),
    "ft_layers.8.linear1.weight": (1024, 512),
    "ft_layers.8.linear2.weight": (512, 1024),
    "ft_layers.8.norm2.bias": (512,),
    "idx_pred_layer.0.weight": (512,),
    "idx_pred_layer.1.weight": (1024, 512),
    "quantize.embedding.weight": (1024, 256),
    "encoder.blocks.0.weight": (64, 3, 3, 3),
    "encoder.blocks.1.norm1.weight": (64,),
    "encoder.blocks.4.conv_out.weight": (128, 64, 1, 1),
    "encoder.blocks.6.conv.weight": (128, 128, 3, 3),
    "encoder.blocks.17.q.weight": (512, 512, 1, 1),
    "encoder.blocks.23.weight": (512,),
    "encoder.blocks.24.weight": (256, 512, 3, 3),
    "generator.blocks.0.weight": (512, 256, 3, 3),
    "generator.blocks.2.proj_out.weight": (512, 512, 1, 1),
    "generator.blocks.8.conv.weight": (512, 512, 3, 3),
    "generator.blocks.21.conv_out.weight": (64, 128, 1, 1),
    "generator.blocks.24.weight": (3, 64, 3, 3),
    "fuse_convs_dict.32.encode_enc.conv1.weight": (256, 512, 3, 3),
    "fuse_convs_dict.32.encode_enc.conv_out.weight": (256, 512, 1, 1),
    "fuse_convs_dict.64.scale.0.weight": (256, 256, 3, 3),
    "fuse_convs_dict.128.shift.2.bias": (128,),
    "fuse_convs_dict.256.scale.2.weight": (128, 128, 3, 3),
}
# Names the official file does not have (bias-free head, no fuse at 16/512 px, no skip conv when channels match).
OFFICIAL_ABSENT_KEYS = (
    "idx_pred_layer.1.bias",
    "fuse_convs_dict.16.scale.0.weight",
    "fuse_convs_dict.512.scale.0.weight",
    "encoder.blocks.1.conv_out.weight",
    "ft_layers.9.linear1.weight",
)


def _to_uint8_bgr(image: torch.Tensor) -> np.ndarray:
    """The reference script's tensor2img: clamp to [-1, 1], to [0, 255], round, RGB->BGR."""
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()[..., ::-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One saved random checkpoint, its enhancer, and the only three 512 px forwards of this module."""
    torch.manual_seed(0)
    net = CodeFormer().eval()
    with torch.no_grad():
        net.position_emb.normal_(0.0, 0.02)  # zeros at init; make it matter
    path = tmp_path_factory.mktemp("codeformer") / "codeformer.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    enhancer = CodeFormerEnhancer(path, device="cpu")

    crop = np.ascontiguousarray(data.astronaut()[None, ..., ::-1])  # real face photo, 512x512, as BGR
    crop_before = crop.copy()
    restored = enhancer.restore(crop, FIDELITY)
    x = torch.from_numpy(crop[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.inference_mode():
        direct = net(x, w=FIDELITY, adain=True)[0]
        direct_w0 = net(x, w=0.0, adain=True)[0]
    return {
        "net": net,
        "path": path,
        "enhancer": enhancer,
        "crop": crop,
        "crop_before": crop_before,
        "restored": restored,
        "direct": direct,
        "direct_w0": direct_w0,
    }


def test_restore_returns_new_uint8_bgr_crops_matching_the_network(run):
    restored, crop = run["restored"], run["crop"]
    assert restored.shape == crop.shape == (1, 512, 512, 3)
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(crop, run["crop_before"])  # input not mutated
    assert not np.shares_memory(restored, crop)
    # The loaded weights are the saved ones, and the pixel path is the reference's (RGB in [-1, 1] in, clamp,
    # round, RGB->BGR out): a swapped channel order or a wrong scale would break equality.
    expected = _to_uint8_bgr(run["direct"])
    diff = np.abs(restored.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1 and diff.mean() < 0.01
    assert restored.std() > 10.0  # a real image came out, not a constant


def test_network_output_is_image_shaped_and_finite(run):
    direct = run["direct"]
    assert direct.shape == (1, 3, 512, 512)
    assert torch.isfinite(direct).all()


def test_fidelity_changes_the_output(run):
    # w=0 skips the fuse blocks entirely; w>0 blends encoder features back in.
    gap = (run["direct"] - run["direct_w0"]).abs().mean().item()
    assert gap > 0.01
    assert not np.array_equal(_to_uint8_bgr(run["direct_w0"]), run["restored"])


def test_parameter_names_and_shapes_match_the_official_checkpoint(run):
    state = run["net"].state_dict()
    shapes = {key: tuple(state[key].shape) for key in OFFICIAL_KEY_SHAPES if key in state}
    assert shapes == OFFICIAL_KEY_SHAPES
    assert not [key for key in OFFICIAL_ABSENT_KEYS if key in state]
    assert len(state) == OFFICIAL_TENSOR_COUNT
    assert not list(run["net"].buffers())  # the official file holds parameters only


def test_parameter_count_matches_the_official_model(run):
    assert sum(p.numel() for p in run["net"].parameters()) == OFFICIAL_PARAM_COUNT
    assert abs(run["path"].stat().st_size - OFFICIAL_FILE_BYTES) < FILE_SIZE_TOLERANCE_BYTES


def test_enhancer_implements_the_protocol(run):
    enhancer = run["enhancer"]
    assert isinstance(enhancer, Enhancer)
    assert enhancer.name == "codeformer"


def test_bare_state_dict_loads(run):
    enhancer = CodeFormerEnhancer(run["net"].state_dict())
    assert enhancer.restore(np.zeros((0, 512, 512, 3), np.uint8), 0.5).shape == (0, 512, 512, 3)


def test_wrong_key_fails_loudly_naming_the_keys(run):
    state = dict(run["net"].state_dict())
    state["feat_embed.weight"] = state.pop("feat_emb.weight")
    with pytest.raises(CodeFormerWeightsError, match=r"missing 1: feat_emb\.weight.*unexpected 1: feat_embed\.weight"):
        CodeFormerEnhancer({"params_ema": state})


def test_wrong_shape_fails_loudly(run):
    state = dict(run["net"].state_dict())
    state["position_emb"] = torch.zeros(64, 512)
    with pytest.raises(CodeFormerWeightsError, match=r"wrong shape 1: position_emb \(64, 512\) != \(256, 512\)"):
        CodeFormerEnhancer(state)


def test_missing_file_names_the_path_and_the_fetch_command(tmp_path):
    missing = tmp_path / "codeformer.pth"
    with pytest.raises(FileNotFoundError, match=r"codeformer\.pth.*mirage-ray models fetch"):
        CodeFormerEnhancer(missing)


def test_unreadable_file_is_a_weights_error(tmp_path):
    junk = tmp_path / "codeformer.pth"
    junk.write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(CodeFormerWeightsError, match="not a readable torch checkpoint"):
        CodeFormerEnhancer(junk)


def test_checkpoint_without_tensors_is_refused():
    with pytest.raises(CodeFormerWeightsError, match="params_ema"):
        CodeFormerEnhancer({"params_ema": {"position_emb": "not a tensor"}})


@pytest.mark.parametrize("fidelity", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_fidelity_out_of_range_is_refused(run, fidelity):
    with pytest.raises(ValueError, match=r"fidelity must be a number in \[0\.0, 1\.0\]"):
        run["enhancer"].restore(run["crop"], fidelity)


@pytest.mark.parametrize(
    "crops",
    [np.zeros((512, 512, 3), np.uint8), np.zeros((1, 256, 256, 3), np.uint8), np.zeros((1, 512, 512, 3), np.float32)],
)
def test_bad_crops_are_refused(run, crops):
    with pytest.raises(ValueError, match=r"crops must be uint8 \(N, 512, 512, 3\)"):
        run["enhancer"].restore(crops, 0.5)


def test_fp16_without_cuda_is_refused(run):
    with pytest.raises(ValueError, match="fp16=True needs a CUDA device"):
        CodeFormerEnhancer(run["path"], device="cpu", fp16=True)


def test_unknown_device_is_refused(run):
    with pytest.raises(ValueError, match="device must be"):
        CodeFormerEnhancer(run["path"], device="meta")


def test_none_enhancer_returns_an_equal_new_array():
    enhancer = NoEnhancer()
    crops = np.ascontiguousarray(data.astronaut()[None, ..., ::-1])
    out = enhancer.restore(crops, 0.5)
    np.testing.assert_array_equal(out, crops)
    assert not np.shares_memory(out, crops)
    assert enhancer.name == "none"
    assert isinstance(enhancer, Enhancer)
    with pytest.raises(ValueError, match="fidelity"):
        enhancer.restore(crops, 2.0)
