"""The production enhancer: CodeFormer face restoration in torch, from the official ``codeformer.pth``.

Input is aligned 512x512 BGR uint8 face crops (FFHQ template, see ``align.FFHQ_TEMPLATE_512``); the network sees
RGB in [-1, 1] and runs ``net(x, w=fidelity, adain=True)`` like the reference inference script. Weights and code
are under the NTU S-Lab License 1.0 (non-commercial). Paste the restored crops back under ``align.face_mask(512)``, a
face-shaped soft mask in FFHQ crop space (the reference uses a face-parsing mask; a square leaves visible edges).

GPU memory: torch's caching allocator is per process and ``torch.cuda.set_per_process_memory_fraction`` is a
global setting, so this class does not touch it. It bounds its own use instead: at most ``max_batch`` crops go
through the network at once (activation memory grows linearly with it). The weights are 94.1 M parameters
(~377 MB in fp32); the activation peak is ~250-300 MiB per crop in fp32 (CPU max-RSS, ``bench/bench_enhance.py``,
which also prints the CUDA allocator peak on a GPU). Pick ``max_batch`` so weights + peak fit the deployment's share
of the card.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mirage_ray.vision.codeformer_arch import CodeFormer
from mirage_ray.vision.enhance_none import check_restore_args

logger = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("params_ema", "params")  # basicsr checkpoints: EMA weights first (the official file has it)
DEFAULT_MAX_BATCH = 4  # crops per forward pass; bounds activation memory on the GPU
PIXEL_HALF_RANGE = 127.5  # uint8 [0, 255] <-> [-1, 1]
MAX_KEYS_IN_ERROR = 8
FETCH_HINT = "run `mirage-ray models fetch` to download and verify codeformer.pth"


class CodeFormerWeightsError(ValueError):
    """The checkpoint cannot be read, or does not match the CodeFormer v0.1.0 architecture."""


def _summarise(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    more = len(keys) - MAX_KEYS_IN_ERROR
    return f"{shown} (+{more} more)" if more > 0 else shown


def _state_dict_from(checkpoint: object, source: str) -> Mapping[str, torch.Tensor]:
    """The parameter mapping inside a basicsr checkpoint (``params_ema`` / ``params``), or the bare mapping."""
    if not isinstance(checkpoint, Mapping):
        raise CodeFormerWeightsError(f"{source}: expected a dict of tensors, got {type(checkpoint).__name__}")
    for key in CHECKPOINT_KEYS:
        if key in checkpoint:
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CodeFormerWeightsError(
            f"{source}: expected {' or '.join(CHECKPOINT_KEYS)} holding a dict of tensors, or a bare state dict"
        )
    return checkpoint


def _read_checkpoint(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"CodeFormer weights not found: {path} ({FETCH_HINT})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for unreadable files
        raise CodeFormerWeightsError(f"{path}: not a readable torch checkpoint ({exc})") from exc


def _resolve_device(device: str, fp16: bool) -> torch.device:
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device")
    if fp16 and resolved.type != "cuda":
        raise ValueError("fp16=True needs a CUDA device; CodeFormer runs in fp32 on the CPU")
    return resolved


class CodeFormerEnhancer:
    """``Enhancer`` backed by CodeFormer; loads weights strictly, so a wrong architecture fails at start."""

    name = "codeformer"

    def __init__(
        self,
        weights: str | Path | Mapping[str, torch.Tensor],
        device: str = "cpu",
        fp16: bool = False,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """``weights``: path to ``codeformer.pth`` or a (checkpoint or bare) state dict already in memory.

        ``fp16`` runs the network under CUDA autocast (weights stay fp32; norms and softmax stay fp32).
        ``max_batch`` caps how many crops one forward pass takes, which bounds activation memory.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = _resolve_device(device, fp16)
        self.fp16 = fp16
        self.max_batch = max_batch
        if isinstance(weights, str | Path):
            source = str(weights)
            state_dict = _state_dict_from(_read_checkpoint(Path(weights)), source)
        else:
            source = "state dict"
            state_dict = _state_dict_from(weights, source)

        net = CodeFormer()
        try:
            net.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise self._mismatch_error(net, state_dict, source) from exc
        self._net = net.eval().requires_grad_(False).to(self.device)
        n_params = sum(p.numel() for p in net.parameters())
        logger.info("codeformer loaded from %s: %.1f M params on %s, fp16=%s", source, n_params / 1e6, device, fp16)

    @staticmethod
    def _mismatch_error(
        net: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
    ) -> CodeFormerWeightsError:
        expected = net.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        reshaped = sorted(
            f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state_dict and state_dict[k].shape != v.shape
        )
        parts = [
            f"{label} {len(keys)}: {_summarise(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
            if keys
        ]
        return CodeFormerWeightsError(
            f"{source} does not match the CodeFormer v0.1.0 architecture; " + "; ".join(parts)
        )

    def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        """Restored crops, uint8 BGR, same shape as ``crops`` (N, 512, 512, 3).

        ``fidelity`` in [0, 1] is CodeFormer's ``w``: 0 = strongest restoration, 1 = closest to the input.
        """
        check_restore_args(crops, fidelity)
        out = np.empty_like(crops)
        autocast = torch.autocast(device_type="cuda", dtype=torch.float16) if self.fp16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for start in range(0, len(crops), self.max_batch):
                stop = start + self.max_batch
                out[start:stop] = self._restore_batch(np.ascontiguousarray(crops[start:stop]), float(fidelity))
        return out

    def _restore_batch(self, crops_bgr: np.ndarray, fidelity: float) -> np.ndarray:
        pixels = torch.from_numpy(crops_bgr).to(self.device)  # (B, H, W, 3) uint8: move the small dtype
        x = pixels.flip(-1).permute(0, 3, 1, 2).float() / PIXEL_HALF_RANGE - 1.0
        restored = self._net(x, w=fidelity, adain=True)[0].float().clamp(-1.0, 1.0)
        restored = ((restored + 1.0) * PIXEL_HALF_RANGE).round().to(torch.uint8)
        return restored.permute(0, 2, 3, 1).flip(-1).cpu().numpy()
