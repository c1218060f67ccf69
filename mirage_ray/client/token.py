"""Where the client's token comes from: ``--token``, else the server's local page token (loopback, auto-token mode)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from mirage_ray.client.extras import ClientError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PAGE_TOKEN_PATH = "v1/page-token"
FETCH_TIMEOUT_S = 10.0
TOKEN_HINT = "pass --token (on the server machine: MIRAGE_JWT_SECRET=... mirage-ray token --sub YOUR_NAME)"


def page_token_url(ws_url: str) -> str:
    """``ws://HOST:PORT/<prefix>/ws`` -> ``http://HOST:PORT/<prefix>/v1/page-token``."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None:
        raise ClientError(f"--url must start with ws:// or wss://, got {ws_url!r}")
    prefix = parts.path.rsplit("/", 1)[0] if parts.path.endswith("/ws") else parts.path.rstrip("/")
    return urlunsplit((scheme, parts.netloc, f"{prefix}/{PAGE_TOKEN_PATH}", "", ""))


def fetch_page_token(ws_url: str) -> str:
    """A short-lived token from a server on this machine running in local auto-token mode."""
    host = urlsplit(ws_url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ClientError(f"no token for {host}: {TOKEN_HINT}")
    url = page_token_url(ws_url)
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ClientError(f"the server has a key configured and gives no page token: {TOKEN_HINT}") from None
        raise ClientError(f"{url} answered HTTP {exc.code}: {TOKEN_HINT}") from None
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot get a page token from {url} ({exc}): is `mirage-ray serve` running?") from None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise ClientError(f"{url} gave no token: {TOKEN_HINT}")
    return token


def resolve_token(ws_url: str, token: str | None) -> str:
    return token if token else fetch_page_token(ws_url)
