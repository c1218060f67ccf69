"""JWT accept/reject cases, token buckets, the invalid-frame window, origin checks, start-up refusal."""

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mirage_ray.config import MirageSettings
from mirage_ray.security import (
    AuthError,
    ConfigurationError,
    InvalidFrameWindow,
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
        ({"nbf": int(time.time()) + 600}, SECRET, "HS256", "not yet valid"),
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
