"""Authentication and abuse limits: JWT verification, token buckets, connection limits, and the frame guard (every
per-message rule on client input, with the invalid-frame window)."""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

import jwt

from mirage_ray import protocol
from mirage_ray.codec import CodecError, checked_image_size
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import CloseCode, ErrorCode, Kind, Media, ProtocolError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
REQUIRED_CLAIMS = ("exp", "sub", "aud")
AUTO_SECRET_BYTES = 32


class AuthError(Exception):
    """The token is missing or invalid; the message never contains the token."""


class ConfigurationError(RuntimeError):
    """The server cannot start safely with this configuration; the message says what to set."""


@dataclass(frozen=True)
class Principal:
    """Who a verified token belongs to."""

    subject: str
    expires_at: float  # unix seconds


class TokenVerifier:
    """Verifies JWTs with the algorithm pinned by configuration (``none`` is never accepted)."""

    def __init__(self, key: str, algorithm: str, audience: str, issuer: str | None, leeway_s: float = 5.0) -> None:
        self._key = key
        self._algorithm = algorithm
        self._audience = audience
        self._issuer = issuer
        self._leeway_s = leeway_s

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("missing token")
        required = [*REQUIRED_CLAIMS, "iss"] if self._issuer else list(REQUIRED_CLAIMS)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": required, "verify_nbf": True},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid token: missing sub")
        return Principal(subject=subject, expires_at=float(claims["exp"]))


class TokenIssuer:
    """Signs tokens for the configured HMAC secret (``mirage-ray token``, the local page's token)."""

    def __init__(self, secret: str, algorithm: str, audience: str, issuer: str | None) -> None:
        if algorithm not in HMAC_ALGORITHMS:
            raise ConfigurationError(f"can only issue tokens for HMAC algorithms {sorted(HMAC_ALGORITHMS)}")
        self._secret = secret
        self._algorithm = algorithm
        self._audience = audience
        self._issuer = issuer

    def issue(self, subject: str, ttl_s: float, now: float | None = None) -> str:
        issued = time.time() if now is None else now
        claims: dict[str, object] = {
            "sub": subject,
            "aud": self._audience,
            "iat": int(issued),
            "nbf": int(issued),
            "exp": int(issued + ttl_s),
        }
        if self._issuer:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._secret, algorithm=self._algorithm)


@dataclass(frozen=True)
class AuthSetup:
    verifier: TokenVerifier
    issuer: TokenIssuer | None  # present when the server can sign tokens itself
    auto_secret: bool  # True: a random secret made at start (loopback only), the page gets tokens


def build_auth(settings: MirageSettings, auto_secret: str | None = None) -> AuthSetup:
    """Verifier (and issuer, for HMAC) from settings; refuses a non-loopback bind without a configured key.

    ``auto_secret`` is the random secret made once at start for a loopback bind with no configured key; the caller
    passes the same value to every replica.
    """
    algorithm = settings.jwt_algorithm
    if algorithm in HMAC_ALGORITHMS:
        secret = settings.jwt_secret
        auto = False
        if not secret:
            if not settings.is_loopback:
                raise ConfigurationError(
                    f"refusing to serve on {settings.host} without a JWT key: set MIRAGE_JWT_SECRET (HS256) or "
                    "MIRAGE_JWT_PUBLIC_KEY with MIRAGE_JWT_ALGORITHM=RS256/ES256, or bind to 127.0.0.1"
                )
            secret = auto_secret or secrets.token_urlsafe(AUTO_SECRET_BYTES)
            auto = True
        verifier = TokenVerifier(secret, algorithm, settings.jwt_audience, settings.jwt_issuer, settings.jwt_leeway_s)
        issuer = TokenIssuer(secret, algorithm, settings.jwt_audience, settings.jwt_issuer)
        return AuthSetup(verifier, issuer, auto)
    if not settings.jwt_public_key:
        raise ConfigurationError(f"MIRAGE_JWT_ALGORITHM={algorithm} needs MIRAGE_JWT_PUBLIC_KEY (PEM)")
    verifier = TokenVerifier(
        settings.jwt_public_key, algorithm, settings.jwt_audience, settings.jwt_issuer, settings.jwt_leeway_s
    )
    return AuthSetup(verifier, None, False)


class TokenBucket:
    """Classic token bucket; ``allow(now)`` spends one token if available."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def allow(self, now: float, cost: float = 1.0) -> bool:
        if self._last is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class InvalidFrameWindow:
    """Fraction of invalid messages over the last ``size``; abandon above ``ratio`` once the window is full."""

    def __init__(self, size: int = 200, ratio: float = 0.30) -> None:
        self._flags: deque[bool] = deque(maxlen=size)
        self._ratio = ratio

    def record(self, invalid: bool) -> None:
        self._flags.append(invalid)

    @property
    def invalid_ratio(self) -> float:
        return sum(self._flags) / len(self._flags) if self._flags else 0.0

    @property
    def should_abandon(self) -> bool:
        return len(self._flags) == self._flags.maxlen and self.invalid_ratio > self._ratio


# --- the frame guard: every per-message rule on client input ------------------------------------------------------
MEDIA_NAMES = {Kind.VIDEO: "video frame", Kind.AUDIO: "audio chunk", Kind.REFERENCE: "reference"}
# a window tipped by one of these closes with 4002 (the stream's framing is broken), by anything else with 4003
FRAMING_ERRORS = frozenset({ErrorCode.BAD_HEADER, ErrorCode.BAD_KIND, ErrorCode.BAD_SEQ, ErrorCode.BAD_JSON})


class FrameRejected(ProtocolError):
    """A client message the guard refused; ``kind`` is the kind its header named (None when the header is bad)."""

    def __init__(self, code: str, message: str, kind: Kind | None = None) -> None:
        super().__init__(code, message)
        self.kind = kind

    @property
    def what(self) -> str:
        """The message as the ``error`` reply names it."""
        return MEDIA_NAMES[self.kind] if self.kind is not None else "message"


class SeqWindow:
    """The seq rule of docs/protocol.md: per kind, +1 per message, wrapping at 2**32.

    The first message of a kind sets the base. After it a seq is accepted when it is at most ``tolerance`` ahead of
    the expected next value (so a client may skip a few) and becomes the new base; a seq further ahead, or behind it
    (a replay), is refused and leaves the expectation where it was.
    """

    def __init__(self, tolerance: int) -> None:
        self._tolerance = tolerance
        self._expected: dict[Kind, int] = {}

    def check(self, kind: Kind, seq: int) -> str | None:
        """None (accepted, the expectation moves on) or why ``seq`` is refused."""
        expected = self._expected.get(kind)
        if expected is not None and (ahead := protocol.seq_ahead(seq, expected)) > self._tolerance:
            behind = protocol.UINT32_MOD - ahead
            where = f"{behind} behind" if behind < ahead else f"{ahead} ahead of"
            return f"seq {seq} is {where} the expected {expected} (tolerance {self._tolerance})"
        self._expected[kind] = (seq + 1) % protocol.UINT32_MOD
        return None


class FrameGuard:
    """Every per-message rule on one session's client input, in the order the receive loop applies them:

    1. size: above ``max_frame_bytes`` closes with 1009 before any parsing (:meth:`too_big`);
    2. header (:meth:`media`): the format of :func:`protocol.unpack` (16 bytes, a known kind, reserved 0), then flags 0
       (flag bits are the server's to set);
    3. seq: within ``seq_tolerance`` of the expected next value of its kind (:class:`SeqWindow`);
    4. payload, before any decode: a video frame's dimensions from its JPEG/PNG header under ``max_image_pixels``;
       audio a non-empty whole number of 10 ms PCM16 frames (a reference image is checked by its decode and answered
       with a ``reference`` reply);
    5. the invalid-frame window over every message's outcome (:meth:`invalid`, :meth:`valid`): more than
       ``invalid_ratio_abandon`` of the last ``invalid_window`` invalid ends the session.
    A refusal in 2-4 is a :class:`FrameRejected`: answered with an ``error``, counted, the message dropped.
    """

    def __init__(self, settings: MirageSettings) -> None:
        self._max_bytes = settings.max_frame_bytes
        self._max_pixels = settings.max_image_pixels
        self._abandon_ratio = settings.invalid_ratio_abandon
        self._seq = SeqWindow(settings.seq_tolerance)
        self._window = InvalidFrameWindow(settings.invalid_window, settings.invalid_ratio_abandon)

    def too_big(self, size: int) -> str | None:
        """The 1009 close reason for a message of ``size`` bytes, or None."""
        return f"message larger than max_frame_bytes={self._max_bytes}" if size > self._max_bytes else None

    def media(self, raw: bytes) -> Media:
        """The binary message as a value once rules 2-4 pass; raises :class:`FrameRejected`."""
        try:
            media = protocol.parse_media(raw)
        except ProtocolError as exc:
            raise FrameRejected(exc.code, str(exc)) from None
        if media.flags:
            raise FrameRejected(ErrorCode.BAD_HEADER, f"flags must be 0 from a client, got {media.flags}", media.kind)
        if (problem := self._seq.check(media.kind, media.seq)) is not None:
            raise FrameRejected(ErrorCode.BAD_SEQ, problem, media.kind)
        if (problem := self._payload_problem(media)) is not None:
            raise FrameRejected(ErrorCode.BAD_PAYLOAD, problem, media.kind)
        return media

    def _payload_problem(self, media: Media) -> str | None:
        if media.kind == Kind.AUDIO:
            return protocol.audio_payload_problem(media.payload)
        if media.kind == Kind.VIDEO:
            try:
                checked_image_size(media.payload, self._max_pixels)
            except CodecError as exc:
                return str(exc)
        return None

    def invalid(self, error: ProtocolError | CodecError) -> tuple[int, str] | None:
        """Count one invalid message; the close (code, reason) when the window now says to abandon the session.

        The message that tipped the window decides: broken framing/JSON closes 4002, bad payloads 4003."""
        self._window.record(True)
        if not self._window.should_abandon:
            return None
        framing = isinstance(error, ProtocolError) and error.code in FRAMING_ERRORS
        code = CloseCode.PROTOCOL_ERROR if framing else CloseCode.ABANDONED
        return code, f"more than {self._abandon_ratio:.0%} of recent messages were invalid"

    def valid(self) -> None:
        """Count one message that passed (a decoded frame, a buffered audio chunk, a decoded reference)."""
        self._window.record(False)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """True when no allowlist is configured, or the Origin header is on it."""
    if not allowed:
        return True
    return origin is not None and origin.rstrip("/") in {a.rstrip("/") for a in allowed}


MAX_TRACKED_KEYS = 10_000  # addresses/subjects with a live bucket; the least recently seen is forgotten beyond this
BYTE_BURST_S = 2.0  # a session may send this many seconds' worth of bytes at once


class KeyedBuckets:
    """One :class:`TokenBucket` per key (client address, token subject), at most ``max_keys`` of them (LRU)."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(now)

    def __len__(self) -> int:
        return len(self._buckets)


class Cooldowns:
    """Keys refused until some time after a flood, at most ``max_keys`` of them (the oldest forgotten first)."""

    def __init__(self, seconds: float, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self._seconds = seconds
        self._max_keys = max_keys
        self._until: OrderedDict[str, float] = OrderedDict()

    def start(self, key: str, now: float) -> None:
        if self._seconds <= 0:
            return
        self._until[key] = now + self._seconds
        self._until.move_to_end(key)
        if len(self._until) > self._max_keys:
            self._until.popitem(last=False)

    def remaining(self, key: str, now: float) -> float:
        """Seconds until ``key`` may connect again (0 when it is not cooling down)."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._until[key]
            return 0.0
        return until - now

    def __len__(self) -> int:
        return len(self._until)


def flood_reason(wait_s: float) -> str:
    return f"rate limited after flooding: retry in {math.ceil(wait_s)} s"


class ConnectionLimiter:
    """New connections per client address and per token subject, and concurrent sessions per subject.

    ``check_address`` runs before the token is verified (so a flood costs no signature checks), ``check_subject``
    after; each returns the reason for refusing (close 4029), or None. ``session_started``/``session_ended``
    bracket every accepted session. ``flooded`` puts a session's address and subject on a cooldown of
    ``flood_cooldown_s`` after the session was closed 4029 for flooding: a reconnect would otherwise get a fresh
    message allowance.
    """

    def __init__(
        self,
        per_address_per_s: float,
        address_burst: int,
        per_subject_per_s: float,
        subject_burst: int,
        max_sessions_per_subject: int,
        max_keys: int = MAX_TRACKED_KEYS,
        flood_cooldown_s: float = 0.0,
    ) -> None:
        self._addresses = KeyedBuckets(per_address_per_s, address_burst, max_keys)
        self._subjects = KeyedBuckets(per_subject_per_s, subject_burst, max_keys)
        self._cooldowns = Cooldowns(flood_cooldown_s, max_keys)
        self._max_sessions = max_sessions_per_subject
        self._live: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: MirageSettings) -> ConnectionLimiter:
        return cls(
            settings.max_connections_per_address_per_s,
            settings.address_connection_burst,
            settings.max_connections_per_subject_per_s,
            settings.subject_connection_burst,
            settings.max_sessions_per_subject,
            flood_cooldown_s=settings.flood_cooldown_s,
        )

    def check_address(self, address: str | None, now: float) -> str | None:
        if (wait := self._cooldowns.remaining(f"address:{address or 'unknown'}", now)) > 0:
            return flood_reason(wait)
        if not self._addresses.allow(address or "unknown", now):
            return "connection rate limit exceeded for this address"
        return None

    def check_subject(self, subject: str, now: float) -> str | None:
        if (wait := self._cooldowns.remaining(f"subject:{subject}", now)) > 0:
            return flood_reason(wait)
        if self._live[subject] >= self._max_sessions:
            return f"too many concurrent sessions for this token (max {self._max_sessions})"
        if not self._subjects.allow(subject, now):
            return "connection rate limit exceeded for this token"
        return None

    def check(self, address: str | None, subject: str, now: float) -> str | None:
        """Both checks at once (the address first)."""
        return self.check_address(address, now) or self.check_subject(subject, now)

    def session_started(self, subject: str) -> None:
        self._live[subject] += 1

    def session_ended(self, subject: str) -> None:
        self._live[subject] -= 1
        if self._live[subject] <= 0:
            del self._live[subject]

    def sessions(self, subject: str) -> int:
        return self._live.get(subject, 0)

    def flooded(self, address: str | None, subject: str, now: float) -> None:
        """A session of ``address`` / ``subject`` was closed 4029 for flooding: both cool down."""
        self._cooldowns.start(f"address:{address or 'unknown'}", now)
        self._cooldowns.start(f"subject:{subject}", now)


class ByteRate:
    """Bytes per second of one session (token bucket where each byte is a token); False means close with 4029."""

    def __init__(self, max_bytes_per_s: float, burst_bytes: float) -> None:
        self._bucket = TokenBucket(max_bytes_per_s, int(burst_bytes))

    @classmethod
    def from_settings(cls, settings: MirageSettings) -> ByteRate:
        """Burst: ``BYTE_BURST_S`` of the rate, and never less than one message of ``max_frame_bytes``."""
        burst = max(settings.max_bytes_per_s * BYTE_BURST_S, settings.max_frame_bytes)
        return cls(settings.max_bytes_per_s, burst)

    def allow(self, nbytes: int, now: float) -> bool:
        return self._bucket.allow(now, cost=float(nbytes))
