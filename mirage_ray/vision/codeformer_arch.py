"""CodeFormer (Zhou et al., NeurIPS 2022) for inference, written to load the official ``codeformer.pth``.

Parameter names and shapes follow the state dict of release v0.1.0 of sczhou/CodeFormer (weights under
``params_ema``), so ``load_state_dict(..., strict=True)`` works on that file. Only the inference path is here:
no training losses, no dropout, no gumbel quantizer.

Layout: a VQGAN encoder (512x512x3 -> 16x16x256), a 9-layer pre-norm transformer that predicts one of 1024
codebook entries per latent position, the codebook lookup, and the VQGAN generator (16x16x256 -> 512x512x3).
Controllable feature transformation blocks (``fuse_convs_dict``) blend encoder features into the generator at
32, 64, 128 and 256 px with weight ``w``: ``w=0`` is pure codebook restoration, ``w=1`` keeps most of the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE_PX = 512  # the network's fixed input and output size
BASE_CHANNELS = 64
CHANNEL_MULT = (1, 2, 2, 4, 4, 8)  # per resolution 512, 256, 128, 64, 32, 16
RES_BLOCKS_PER_LEVEL = 2
ATTN_RESOLUTIONS_PX = (16,)
LATENT_CHANNELS = 256
LATENT_SIDE = IMAGE_SIZE_PX // 2 ** (len(CHANNEL_MULT) - 1)  # 16
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6
ADAIN_EPS = 1e-5
FUSE_LEAKY_SLOPE = 0.2

# Feature-map side (px) -> channel count, and the block index after which the encoder's feature is kept and
# the generator's feature is fused (official CodeFormer constants; they follow from the block lists below).
FUSE_CHANNELS = {"16": 512, "32": 256, "64": 256, "128": 128, "256": 128, "512": 64}
ENCODER_TAP_BLOCK = {"512": 2, "256": 5, "128": 8, "64": 11, "32": 14, "16": 18}
GENERATOR_FUSE_BLOCK = {"16": 6, "32": 9, "64": 12, "128": 15, "256": 18, "512": 21}
DEFAULT_CONNECT = ("32", "64", "128", "256")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=GROUP_NORM_EPS, affine=True)


def _conv3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a 1x1 projection on the skip when the channel count changes."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = _conv3(in_ch, out_ch)
        self.norm2 = _group_norm(out_ch)
        self.conv2 = _conv3(out_ch, out_ch)
        self.conv_out = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_out is None else self.conv_out(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/out projections and a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(proj: nn.Conv2d) -> torch.Tensor:  # (B, 1, HW, C): one head over all positions
            return proj(normed).reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)

        attended = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        attended = attended.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom (halves the side exactly)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """512x512x3 image -> 16x16x256 latent, as one flat ``blocks`` list (indices are part of the weight names)."""

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv3(3, BASE_CHANNELS)]
        side = IMAGE_SIZE_PX
        ch = BASE_CHANNELS
        for level, mult in enumerate(CHANNEL_MULT):
            out_ch = BASE_CHANNELS * mult
            for _ in range(RES_BLOCKS_PER_LEVEL):
                blocks.append(ResBlock(ch, out_ch))
                ch = out_ch
                if side in ATTN_RESOLUTIONS_PX:
                    blocks.append(AttnBlock(ch))
            if level != len(CHANNEL_MULT) - 1:
                blocks.append(Downsample(ch))
                side //= 2
        blocks += [ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch), _group_norm(ch), _conv3(ch, LATENT_CHANNELS)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Generator(nn.Module):
    """16x16x256 latent -> 512x512x3 image in [-1, 1] (unclamped), as one flat ``blocks`` list."""

    def __init__(self) -> None:
        super().__init__()
        ch = BASE_CHANNELS * CHANNEL_MULT[-1]
        side = LATENT_SIDE
        blocks: list[nn.Module] = [_conv3(LATENT_CHANNELS, ch), ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch)]
        for level in reversed(range(len(CHANNEL_MULT))):
            out_ch = BASE_CHANNELS * CHANNEL_MULT[level]
            for _ in range(RES_BLOCKS_PER_LEVEL):
                blocks.append(ResBlock(ch, out_ch))
                ch = out_ch
                if side in ATTN_RESOLUTIONS_PX:
                    blocks.append(AttnBlock(ch))
            if level != 0:
                blocks.append(Upsample(ch))
                side *= 2
        blocks += [_group_norm(ch), _conv3(ch, 3)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class VectorQuantizer(nn.Module):
    """The learned codebook: 1024 entries of 256 channels (``quantize.embedding.weight``)."""

    def __init__(self, codebook_size: int, channels: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, channels)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def lookup(self, indices: torch.Tensor, side: int) -> torch.Tensor:
        """(B, side*side) code indices -> (B, C, side, side) latent."""
        feat = self.embedding(indices)  # (B, HW, C)
        b, _, c = feat.shape
        return feat.reshape(b, side, side, c).permute(0, 3, 1, 2).contiguous()


class TransformerSALayer(nn.Module):
    """Pre-norm transformer layer: self-attention (position added to queries and keys) then a GELU MLP."""

    def __init__(self, dim: int, n_head: int, dim_mlp: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, n_head, dropout=0.0)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``tokens`` and ``pos`` are sequence-first: (HW, B, dim)."""
        normed = self.norm1(tokens)
        query_key = normed + pos
        attended = self.self_attn(query_key, query_key, value=normed, need_weights=False)[0]
        tokens = tokens + attended
        return tokens + self.linear2(F.gelu(self.linear1(self.norm2(tokens))))


class FuseSftBlock(nn.Module):
    """Controllable feature transformation: ``dec + w * (dec * scale(enc) + shift(enc))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = self._branch(channels)
        self.shift = self._branch(channels)

    @staticmethod
    def _branch(channels: int) -> nn.Sequential:
        return nn.Sequential(
            _conv3(channels, channels), nn.LeakyReLU(FUSE_LEAKY_SLOPE, inplace=True), _conv3(channels, channels)
        )

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: float) -> torch.Tensor:
        cond = self.encode_enc(torch.cat([enc_feat, dec_feat], dim=1))
        return dec_feat + w * (dec_feat * self.scale(cond) + self.shift(cond))


def adaptive_instance_norm(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``content`` re-normalised to ``style``'s per-channel mean and (unbiased) std."""

    def stats(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = feat.flatten(2)
        mean = flat.mean(dim=2)[..., None, None]
        std = (flat.var(dim=2) + ADAIN_EPS).sqrt()[..., None, None]
        return mean, std

    content_mean, content_std = stats(content)
    style_mean, style_std = stats(style)
    return (content - content_mean) / content_std * style_std + style_mean


class CodeFormer(nn.Module):
    """CodeFormer with the official v0.1.0 hyper-parameters as defaults.

    ``forward(x, w, adain)`` takes (B, 3, 512, 512) RGB in [-1, 1] and returns ``(image, logits, lq_feat)`` like
    the reference: ``image`` (B, 3, 512, 512) roughly in [-1, 1] (clamp before use), ``logits`` (B, 256, 1024)
    code predictions, ``lq_feat`` (B, 256, 16, 16) encoder latent.
    """

    def __init__(
        self,
        dim_embd: int = 512,
        n_head: int = 8,
        n_layers: int = 9,
        codebook_size: int = 1024,
        latent_size: int = LATENT_SIDE * LATENT_SIDE,
        connect_list: tuple[str, ...] = DEFAULT_CONNECT,
    ) -> None:
        super().__init__()
        if latent_size != LATENT_SIDE * LATENT_SIDE:
            raise ValueError(f"latent_size must be {LATENT_SIDE * LATENT_SIDE} for {IMAGE_SIZE_PX} px input")
        unknown = [size for size in connect_list if size not in FUSE_CHANNELS]
        if unknown:
            raise ValueError(f"connect_list entries must be among {sorted(FUSE_CHANNELS)}, got {unknown}")
        self.connect_list = tuple(connect_list)
        self.encoder = Encoder()
        self.quantize = VectorQuantizer(codebook_size, LATENT_CHANNELS)
        self.generator = Generator()
        self.position_emb = nn.Parameter(torch.zeros(latent_size, dim_embd))
        self.feat_emb = nn.Linear(LATENT_CHANNELS, dim_embd)
        self.ft_layers = nn.Sequential(*(TransformerSALayer(dim_embd, n_head, 2 * dim_embd) for _ in range(n_layers)))
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim_embd), nn.Linear(dim_embd, codebook_size, bias=False))
        self.fuse_convs_dict = nn.ModuleDict({size: FuseSftBlock(FUSE_CHANNELS[size]) for size in connect_list})

    def forward(
        self, x: torch.Tensor, w: float = 0.0, adain: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, IMAGE_SIZE_PX, IMAGE_SIZE_PX):
            raise ValueError(f"CodeFormer expects (B, 3, {IMAGE_SIZE_PX}, {IMAGE_SIZE_PX}), got {tuple(x.shape)}")

        taps = {ENCODER_TAP_BLOCK[size]: size for size in self.connect_list}
        enc_feats: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in taps:
                enc_feats[taps[i]] = x
        lq_feat = x

        # Transformer over the 256 latent positions, sequence-first: (HW, B, C).
        batch = lq_feat.shape[0]
        pos = self.position_emb.unsqueeze(1).expand(-1, batch, -1)
        tokens = self.feat_emb(lq_feat.flatten(2).permute(2, 0, 1))
        for layer in self.ft_layers:
            tokens = layer(tokens, pos)
        logits = self.idx_pred_layer(tokens).permute(1, 0, 2)  # (B, HW, codebook_size)

        quant_feat = self.quantize.lookup(logits.argmax(dim=2), LATENT_SIDE)
        if adain:
            quant_feat = adaptive_instance_norm(quant_feat, lq_feat)

        fuse_at = {GENERATOR_FUSE_BLOCK[size]: size for size in self.connect_list}
        x = quant_feat
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if i in fuse_at and w > 0:
                size = fuse_at[i]
                x = self.fuse_convs_dict[size](enc_feats[size], x, w)
        return x, logits, lq_feat
