"""JWT accept/reject cases, token buckets, connection and byte limits, the invalid-frame window, origin checks,
start-up refusal."""

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mirage_ray.config import MirageSettings
from mirage_ray.security import (
    AuthError,
    ByteRate,
    ConfigurationError,
    ConnectionLimiter,
    InvalidFrameWindow,
    KeyedBuckets,
    TokenBucket,
    TokenVerifier,
    build_auth,
    origin_allowed,
)

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def make(claims: dict, key: str = SECRET, algorithm: str = "HS256") -> str:
    base = {"sub": "alice", "aud": "mirage", "exp": int(time.time()) + 60}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm=algorithm)


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, "HS256", "mirage", issuer=None, leeway_s=0)


def test_valid_token_gives_the_subject(verifier: TokenVerifier) -> None:
    principal = verifier.verify(make({}))
    assert principal.subject == "alice"
    assert principal.expires_at > time.time()


@pytest.mark.parametrize(
    ("claims", "key", "algorithm", "why"),
    [
        ({"exp": int(time.time()) - 10}, SECRET, "HS256", "expired"),
        # a day ahead: the claims are made when pytest collects, and the suite runs long before it reaches this test
        ({"nbf": int(time.time()) + 86_400}, SECRET, "HS256", "not yet valid"),
        ({"aud": "someone-else"}, SECRET, "HS256", "wrong audience"),
        ({"sub": None}, SECRET, "HS256", "no subject"),
        ({"exp": None}, SECRET, "HS256", "no expiry"),
        ({}, "another-secret-another-secret-0123", "HS256", "bad signature"),
        ({}, SECRET, "HS512", "algorithm not pinned"),
    ],
)
def test_rejections(verifier: TokenVerifier, claims: dict, key: str, algorithm: str, why: str) -> None:
    with pytest.raises(AuthError):
        verifier.verify(make(claims, key, algorithm))


def test_alg_none_and_missing_token_are_rejected(verifier: TokenVerifier) -> None:
    unsigned = jwt.encode({"sub": "a", "aud": "mirage", "exp": int(time.time()) + 60}, None, algorithm="none")
    for token in (unsigned, None, "", "garbage"):
        with pytest.raises(AuthError) as info:
            verifier.verify(token)
        assert unsigned not in str(info.value)


def test_issuer_is_checked_when_configured() -> None:
    strict = TokenVerifier(SECRET, "HS256", "mirage", issuer="https://id.example", leeway_s=0)
    assert strict.verify(make({"iss": "https://id.example"})).subject == "alice"
    with pytest.raises(AuthError):
        strict.verify(make({}))
    with pytest.raises(AuthError):
        strict.verify(make({"iss": "https://evil.example"}))


def test_es256_public_key_verification() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = MirageSettings(jwt_algorithm="ES256", jwt_public_key=public_pem)
    auth = build_auth(settings)
    assert auth.issuer is None and not auth.auto_secret
    assert auth.verifier.verify(make({}, key=private, algorithm="ES256")).subject == "alice"
    with pytest.raises(AuthError):  # an HS256 token signed with the public key text must not pass
        auth.verifier.verify(make({}, key=public_pem.encode()[:64].decode(), algorithm="HS256"))


def test_auto_secret_only_on_loopback() -> None:
    auth = build_auth(MirageSettings(host="127.0.0.1"))
    assert auth.auto_secret and auth.issuer is not None
    token = auth.issuer.issue("page", ttl_s=60)
    assert auth.verifier.verify(token).subject == "page"
    with pytest.raises(ConfigurationError, match="MIRAGE_JWT_SECRET"):
        build_auth(MirageSettings(host="0.0.0.0"))
    configured = build_auth(MirageSettings(host="0.0.0.0", jwt_secret=SECRET))
    assert not configured.auto_secret
    assert configured.verifier.verify(make({})).subject == "alice"


def test_token_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(0.05) is False  # half a token
    assert bucket.allow(0.1) is True


def test_invalid_window_abandons_only_above_ratio_once_full() -> None:
    window = InvalidFrameWindow(size=200, ratio=0.30)
    for i in range(199):
        window.record(i % 2 == 0)  # 50% invalid but window not full yet
    assert not window.should_abandon
    window.record(False)
    assert window.should_abandon
    healthy = InvalidFrameWindow(size=200, ratio=0.30)
    for i in range(200):
        healthy.record(i < 60)  # exactly 30%: not more than 30%
    assert not healthy.should_abandon
    healthy.record(True)  # 61st invalid pushes out a valid one? no: pushes out the oldest (invalid)
    assert healthy.invalid_ratio == pytest.approx(60 / 200)


def test_origin_allowlist() -> None:
    assert origin_allowed(None, ())
    assert origin_allowed("https://app.example/", ("https://app.example",))
    assert not origin_allowed("https://evil.example", ("https://app.example",))
    assert not origin_allowed(None, ("https://app.example",))


def limiter(max_sessions: int = 2) -> ConnectionLimiter:
    return ConnectionLimiter(
        per_address_per_s=1.0,
        address_burst=3,
        per_subject_per_s=2.0,
        subject_burst=4,
        max_sessions_per_subject=max_sessions,
    )


def test_connection_limit_per_address_refills_and_spares_other_addresses() -> None:
    limits = limiter()
    assert [limits.check_address("10.0.0.1", 0.0) for _ in range(3)] == [None, None, None]
    refused = limits.check_address("10.0.0.1", 0.0)
    assert refused is not None and "address" in refused
    assert limits.check_address("10.0.0.2", 0.0) is None  # another client is unaffected
    assert limits.check_address("10.0.0.1", 0.5) is not None  # half a token
    assert limits.check_address("10.0.0.1", 1.0) is None  # one second later: one more


def test_connection_limit_per_subject_refills_and_spares_other_subjects() -> None:
    limits = limiter(max_sessions=100)
    assert all(limits.check_subject("alice", 0.0) is None for _ in range(4))
    refused = limits.check_subject("alice", 0.0)
    assert refused is not None and "token" in refused
    assert limits.check_subject("bob", 0.0) is None
    assert limits.check_subject("alice", 0.5) is None  # 2/s: one token after 0.5 s
    assert limits.check_subject("alice", 0.5) is not None


def test_concurrent_sessions_per_subject() -> None:
    limits = limiter(max_sessions=2)
    for t in (0.0, 1.0):
        assert limits.check_subject("alice", t) is None
        limits.session_started("alice")
    refused = limits.check_subject("alice", 10.0)  # buckets full again: only the concurrency limit refuses
    assert refused is not None and "concurrent sessions" in refused and "max 2" in refused
    assert limits.check_subject("bob", 10.0) is None
    limits.session_ended("alice")
    assert limits.sessions("alice") == 1
    assert limits.check_subject("alice", 10.0) is None
    limits.session_ended("alice")
    assert limits.sessions("alice") == 0


def test_combined_check_refuses_the_address_first() -> None:
    limits = limiter()
    for _ in range(3):
        assert limits.check("10.0.0.1", "alice", 0.0) is None
    assert "address" in (limits.check("10.0.0.1", "alice", 0.0) or "")


def test_keyed_buckets_forget_the_least_recently_seen_key() -> None:
    buckets = KeyedBuckets(rate_per_s=0.1, burst=1, max_keys=2)
    assert buckets.allow("a", 0.0) and buckets.allow("b", 0.0)
    assert not buckets.allow("a", 0.0)  # a is now the most recent
    assert buckets.allow("c", 0.0)  # evicts b
    assert len(buckets) == 2
    assert not buckets.allow("a", 0.0)  # a was kept: still empty
    assert buckets.allow("b", 0.0)  # b was forgotten: a fresh bucket


def test_connection_limiter_from_settings() -> None:
    settings = MirageSettings(
        max_connections_per_address_per_s=1.0, address_connection_burst=1, max_sessions_per_subject=1
    )
    limits = ConnectionLimiter.from_settings(settings)
    assert limits.check_address("a", 0.0) is None and limits.check_address("a", 0.0) is not None
    limits.session_started("alice")
    assert limits.check_subject("alice", 0.0) is not None


def test_byte_rate_allows_the_rate_and_refuses_above_it() -> None:
    rate = ByteRate(max_bytes_per_s=1000, burst_bytes=2000)
    assert rate.allow(2000, 0.0)
    assert not rate.allow(1, 0.0)
    assert not rate.allow(600, 0.5)  # 500 bytes refilled
    assert rate.allow(500, 0.5)
    for step in range(1, 17):  # exactly the rate, sustained, is allowed (binary-exact times)
        assert rate.allow(125, 0.5 + step * 0.125)
    assert not rate.allow(1, 2.5)


def test_byte_rate_burst_covers_one_largest_message() -> None:
    settings = MirageSettings(max_bytes_per_s=16_000, max_frame_bytes=1_000_000)
    rate = ByteRate.from_settings(settings)
    assert rate.allow(1_000_000, 0.0)  # a single max-size message always fits the burst
    assert not rate.allow(1_000, 0.0)
    roomy = ByteRate.from_settings(MirageSettings(max_bytes_per_s=8_000_000, max_frame_bytes=2_000_000))
    assert roomy.allow(16_000_000, 0.0) and not roomy.allow(1, 0.0)  # burst = 2 s of the rate
