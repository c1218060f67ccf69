"""One typed settings object for the whole service.

Values come from the environment (``MIRAGE_*``) and can be overridden per application from serve_config.yaml
``args``. Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DetectorChoice = Literal["auto", "scrfd", "retinaface"]
SwapperChoice = Literal["auto", "inswapper", "classical", "passthrough"]
EnhancerChoice = Literal["auto", "codeformer", "none"]
VoiceChoice = Literal["auto", "rvc", "world", "passthrough"]
StageName = Literal["detect", "swap", "enhance", "voice"]
FailureChoice = Literal["mask", "reveal"]
JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "ES256"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def default_model_dir() -> Path:
    """insightface-compatible cache root: ~/.insightface/models."""
    return Path.home() / ".insightface" / "models"


class MirageSettings(BaseSettings):
    """Every knob of the service, validated once; bad values are refused with the allowed range."""

    model_config = SettingsConfigDict(env_prefix="MIRAGE_", extra="forbid", frozen=True)

    # --- serving --------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    sessions_per_replica: int = Field(8, ge=1, le=256, description="max WebSocket sessions per ingress replica")
    max_sessions: int = Field(
        8, ge=1, le=10_000, description="sessions the application holds at full quality (measured per profile)"
    )
    admission_live_load: bool = Field(
        True, description="also refuse while an admitted session is out of budget (not only at max_sessions)"
    )
    local_stages: tuple[StageName, ...] = Field(
        (), description="stages the ingress runs in its own process instead of calling their deployment"
    )
    video_threads: int = Field(2, ge=1, le=64, description="ingress threads for video CPU work (off the event loop)")
    audio_threads: int = Field(1, ge=1, le=64, description="ingress threads for audio CPU work (never behind video)")
    video_thread_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="CPU niceness added to the ingress's video threads (Linux, per thread) so that the event loop and "
        "audio run first; for dedicated servers: beside other busy processes (a browser) the video starves",
    )
    on_stage_failure: FailureChoice = Field(
        "mask", description="a frame/block that could not be processed: mask the face / disguise the voice, or reveal"
    )
    video_stage_timeout_ms: float = Field(
        400.0, ge=10.0, le=10_000.0, description="a frame whose stage calls take longer goes out masked"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- security -------------------------------------------------------------------------------
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithm: JwtAlgorithm = "HS256"
    jwt_audience: str = "mirage"
    jwt_issuer: str | None = None
    jwt_leeway_s: float = Field(5.0, ge=0.0, le=300.0)
    page_token_ttl_s: int = Field(3600, ge=60, le=86400, description="lifetime of the token the local page gets")
    allowed_origins: tuple[str, ...] = ()
    max_frame_bytes: int = Field(2_000_000, ge=1024, le=16 * 1024 * 1024)
    max_messages_per_s: float = Field(120.0, ge=1.0, le=10_000.0)
    message_burst: int = Field(240, ge=1, le=100_000)
    max_connections_per_s: float = Field(5.0, ge=0.1, le=1000.0)
    connection_burst: int = Field(20, ge=1, le=10_000)
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64, le=8192 * 8192)
    invalid_window: int = Field(200, ge=10, le=10_000)
    invalid_ratio_abandon: float = Field(0.30, gt=0.0, le=1.0)
    max_connections_per_address_per_s: float = Field(5.0, ge=0.1, le=1000.0)
    address_connection_burst: int = Field(20, ge=1, le=10_000)
    max_connections_per_subject_per_s: float = Field(5.0, ge=0.1, le=1000.0)
    subject_connection_burst: int = Field(20, ge=1, le=10_000)
    max_sessions_per_subject: int = Field(8, ge=1, le=10_000, description="concurrent sessions per token sub")
    flood_cooldown_s: float = Field(
        30.0,
        ge=0.0,
        le=3600.0,
        description="after a 4029 for flooding: that address and token sub are refused this long (0: off)",
    )
    max_bytes_per_s: int = Field(8_000_000, ge=16_000, le=1_000_000_000, description="inbound bytes per session")
    # control messages are tiny: a text above this is refused before parsing
    max_json_bytes: int = Field(16_384, ge=256, le=16 * 1024 * 1024)
    # nesting of arrays/objects, far below the interpreter's recursion limit
    max_json_depth: int = Field(32, ge=2, le=256)
    seq_tolerance: int = Field(
        1000,
        ge=0,
        le=1 << 20,
        description="a message's seq may run at most this far ahead of the expected next one for its kind; "
        "beyond it, or behind (a replay), the message is invalid",
    )

    # --- video ----------------------------------------------------------------------------------
    video_width: int = Field(512, ge=64, le=1920)
    video_height: int = Field(512, ge=64, le=1920)
    video_fps: float = Field(20.0, ge=1.0, le=60.0)
    jpeg_quality: int = Field(85, ge=30, le=100)
    max_faces: int = Field(1, ge=1, le=16)
    detect_every: int = Field(5, ge=1, le=100)
    det_size: int = Field(640, ge=128, le=1280)
    embedded_det_size: int = Field(
        512, ge=128, le=1280, description="longest image side the embedded RetinaFace detector runs at"
    )
    det_threshold: float = Field(0.5, ge=0.05, le=0.99)
    detector: DetectorChoice = "auto"
    swapper: SwapperChoice = "auto"
    enhancer: EnhancerChoice = "auto"
    enhance: bool = False
    inswapper_precision: Literal["fp32", "fp16"] = "fp32"
    codeformer_fidelity: float = Field(0.75, ge=0.0, le=1.0)
    onnx_providers: tuple[str, ...] = ()
    onnx_threads: int = Field(0, ge=0, le=64, description="0 = onnxruntime default")
    gpu_mem_limit_mb: int = Field(4096, ge=256, le=80_000)

    # --- audio ----------------------------------------------------------------------------------
    # the block the server starts at: 80 ms (not the seed's 192) so that mouth-to-ear can reach 200 ms; WORLD fits
    # it with room to spare, and the grow rule lengthens it on a machine that cannot (docs/benchmarks.md)
    chunk_ms: int = Field(80, ge=40, le=1000, description="voice block the server starts at, ms")
    min_chunk_ms: int = Field(80, ge=40, le=1000)
    max_chunk_ms: int = Field(480, ge=40, le=1000)
    # left context per voice window; unset: what the voice backends need (WORLD 128 ms, RVC 384 ms: their modules)
    context_ms: int | None = Field(None, ge=0, le=3000, description="left context per voice window, ms")
    # crossfade + SOLA search = the converter's hold-back (pure delay); 10 + 3 ms still removes boundary clicks
    # (click score 0.88 at 80 ms blocks, ~1 = clean; 6.7 without the join; docs/benchmarks.md)
    crossfade_ms: int = Field(10, ge=0, le=200, description="sin² crossfade at block joins, ms")
    sola_search_ms: int = Field(3, ge=0, le=50, description="how far SOLA may slide a block to match the last, ms")
    crossfade: bool = True
    gate_db: float = Field(-50.0, ge=-120.0, le=0.0)
    voice: VoiceChoice = "auto"
    voice_preset: str = "deeper"
    voice_fp16: bool = False
    pitch_semitones: float = Field(0.0, ge=-24.0, le=24.0)
    formant_shift: float = Field(1.0, ge=0.5, le=2.0)

    # --- models ---------------------------------------------------------------------------------
    model_dir: Path = Field(default_factory=default_model_dir)
    inswapper_url: str | None = None
    codeformer_url: str | None = None
    scrfd_url: str | None = None
    arcface_url: str | None = None
    rmvpe_url: str | None = None
    contentvec_url: str | None = None

    # --- controller -----------------------------------------------------------------------------
    stage_budget_ms: dict[str, float] = Field(
        default_factory=lambda: {"video.detect": 15.0, "video.swap": 25.0, "video.enhance": 25.0},
        description="p95 per shared stage above which the controller counts it saturated (A10G defaults)",
    )

    # --- batching -------------------------------------------------------------------------------
    # defaults of each model deployment's user_config (mirage_ray/stage_api.py BatchConfig), which can change them
    # per deployment on live replicas (docs/configuration.md)
    batch_max_size: int = Field(8, ge=1, le=64, description="@serve.batch max batch size of the model deployments")
    batch_wait_s: float = Field(0.002, ge=0.0, le=0.1, description="@serve.batch wait for a batch to fill")

    @field_validator("voice_preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from mirage_ray.voice.presets import PRESETS

        if value not in PRESETS:
            raise ValueError(f"must be one of {', '.join(PRESETS)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _chunk_bounds(self) -> MirageSettings:
        if not self.min_chunk_ms <= self.chunk_ms <= self.max_chunk_ms:
            raise ValueError(
                f"chunk_ms must lie in [min_chunk_ms, max_chunk_ms] = [{self.min_chunk_ms}, {self.max_chunk_ms}],"
                f" got {self.chunk_ms}"
            )
        return self

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS


def load_settings(**overrides: object) -> MirageSettings:
    """Environment first, then explicit overrides (e.g. serve_config.yaml ``args``)."""
    return MirageSettings(**overrides)  # type: ignore[arg-type]


def field_range(name: str) -> tuple[float, float]:
    """(lowest, highest) allowed value of a numeric setting: ranges are written once, on the fields above."""
    low = high = None
    for constraint in MirageSettings.model_fields[name].metadata:
        low = getattr(constraint, "ge", low)
        high = getattr(constraint, "le", high)
    if low is None or high is None:
        raise KeyError(f"setting {name!r} has no closed range")
    return low, high
