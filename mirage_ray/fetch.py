"""Download one file safely: progress bar, resume, a lock, sha256 and an atomic rename.

``fetch`` writes ``<dest>.part`` (kept between runs so a later call resumes with an HTTP Range request), holds
``<dest>.lock`` (``fcntl.flock``) so two fetchers of the same file never collide, checks size and sha256, and only
then renames the part into place. Whatever fails, ``dest`` is either absent or the previous complete file. Only the
standard library is used for the transfer (urllib); ``http``, ``https`` and ``file`` URLs are accepted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # read / hash block
TIMEOUT_S = 30.0  # connect and per-read socket timeout
RETRIES = 3  # automatic resumes after a transfer cut short
RETRY_DELAY_S = 2.0  # pause before an automatic resume
USER_AGENT = "mirage-ray-fetch/1"
ALLOWED_SCHEMES = frozenset({"http", "https", "file"})


class FetchError(RuntimeError):
    """A download failed; the destination file was not written (a ``.part`` may remain for resume)."""


class _CutShortError(Exception):
    """The transfer stopped before the announced end; resumable."""


def part_path(dest: Path) -> Path:
    """Where the in-progress download of ``dest`` lives."""
    return dest.with_name(dest.name + ".part")


def lock_path(dest: Path) -> Path:
    """The lock file guarding downloads of ``dest``."""
    return dest.with_name(dest.name + ".lock")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, sha256: str) -> bool:
    """True when the file at ``path`` has this sha256 (case-insensitive); raises FileNotFoundError if absent."""
    return sha256_file(Path(path)) == sha256.lower()


def fetch(
    url: str,
    dest: Path,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    *,
    retries: int = RETRIES,
    timeout_s: float = TIMEOUT_S,
) -> str:
    """Download ``url`` to ``dest`` and return the file's sha256.

    A ``dest`` already there that matches ``sha256`` (or ``size`` when no hash is given) is kept without
    downloading. A transfer cut short is resumed up to ``retries`` times; after that the ``.part`` stays so the
    next call resumes. A size or hash mismatch deletes the ``.part``. Raises FetchError with a readable message.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise FetchError(f"cannot fetch {url!r}: only {', '.join(sorted(ALLOWED_SCHEMES))} URLs are supported")
    expected = sha256.lower() if sha256 else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(lock_path(dest)):
        kept = _existing_digest(dest, expected, size)
        if kept is not None:
            logger.info("%s is already present and matches; nothing to download", dest)
            return kept
        part = part_path(dest)
        attempt = 0
        while True:
            try:
                digest, received = _download(url, part, size, progress, timeout_s)
                break
            except _CutShortError as exc:
                attempt += 1
                if attempt > retries:
                    raise FetchError(
                        f"download of {url} was cut short: {exc}; {_part_bytes(part)} bytes are kept in {part}, "
                        "run the same command again to resume"
                    ) from exc
                logger.warning("%s; resuming (attempt %d of %d)", exc, attempt, retries)
                time.sleep(RETRY_DELAY_S)
        if size is not None and received != size:
            part.unlink(missing_ok=True)
            raise FetchError(f"{url} gave {received} bytes, expected {size}; the download was discarded")
        if expected is not None and digest != expected:
            part.unlink(missing_ok=True)
            raise FetchError(
                f"sha256 mismatch for {dest.name} from {url}: expected {expected}, got {digest}; the download was"
                " discarded (a corrupt transfer, or the source serves a different file)"
            )
        os.replace(part, dest)
        _fsync_dir(dest.parent)
        logger.info("fetched %s (%d bytes, sha256 %s)", dest, received, digest)
        return digest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed); waits for another holder."""
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another fetch of %s to finish", path.name.removesuffix(".lock"))
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _existing_digest(dest: Path, expected: str | None, size: int | None) -> str | None:
    """Digest of an acceptable file already at ``dest``, else None (absent, wrong size or wrong hash)."""
    if not dest.is_file():
        return None
    if size is not None and dest.stat().st_size != size:
        logger.warning("%s has %d bytes, expected %d: downloading again", dest, dest.stat().st_size, size)
        return None
    digest = sha256_file(dest)
    if expected is not None and digest != expected:
        logger.warning("%s has sha256 %s, expected %s: downloading again", dest, digest, expected)
        return None
    return digest


def _part_bytes(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def _download(url: str, part: Path, size: int | None, progress: bool, timeout_s: float) -> tuple[str, int]:
    """Fill ``part`` from ``url``, resuming from its current length; return (sha256, total bytes)."""
    offset = _part_bytes(part)
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    response = _open(url, offset, timeout_s)
    if response is None:  # 416: the server says the part already holds every byte
        return sha256_file(part), offset
    with response:
        offset = _resume_offset(response, offset, url)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as fh:
                while block := fh.read(CHUNK_BYTES):
                    digest.update(block)
        received = offset
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            file=sys.stderr,
            disable=not progress,
        )
        with bar, open(part, "ab" if offset else "wb") as fh:
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                    raise _CutShortError(f"connection lost after {received} bytes ({exc})") from exc
                if not block:
                    break
                fh.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
            fh.flush()
            os.fsync(fh.fileno())
    if total is not None and received < total:
        raise _CutShortError(f"connection closed after {received} of {total} bytes")
    return digest.hexdigest(), received


def _open(url: str, offset: int, timeout_s: float) -> http.client.HTTPResponse | None:
    """Open the URL (with a Range header when resuming); None when the range is already complete (416)."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None
        raise FetchError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(
            f"cannot reach {url}: {reason}. Check the network, or point the model's URL setting at a reachable"
            " mirror (see docs/models.md)"
        ) from exc


def _resume_offset(response: http.client.HTTPResponse, offset: int, url: str) -> int:
    """The offset the response body starts at: ``offset`` for a matching 206, else 0 (start over)."""
    if not offset:
        return 0
    content_range = response.headers.get("Content-Range", "")
    if getattr(response, "status", None) == 206 and content_range.startswith(f"bytes {offset}-"):
        logger.info("resuming %s at byte %d", url, offset)
        return offset
    logger.info("%s did not honour the Range request; starting over", url)
    return 0


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; best effort on filesystems that refuse directory fsync."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
