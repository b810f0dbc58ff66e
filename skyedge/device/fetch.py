"""Downloads for the device: TUF metadata through python-tuf's fetcher interface, and model objects
with resume (HTTP Range) into a staging file, never past the signed length.

A base URL is `http(s)://…` (the store served over HTTP: S3 path-style, MinIO, a CDN) or a local
directory (a LocalStore, or `file://…`). urllib3 makes no retries of its own: the agent decides
what is retried, resumed or refused.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import urllib3
from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient.fetcher import FetcherInterface

CHUNK = 64 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadFailed(RuntimeError):
    """A download failed; `reason` is the category the agent reports."""

    reason = "download-failed"


class Unreachable(DownloadFailed):
    """The store could not be reached or answered with a server error: try again later."""

    reason = "store-unreachable"


class Interrupted(DownloadFailed):
    """The connection dropped mid-object: resume from what is on disk."""

    reason = "download-interrupted"


class EndlessData(DownloadFailed):
    """The server offered or sent more bytes than the signed length: cut off and refused."""

    reason = "endless-data"


class Missing(DownloadFailed):
    """The object is not in the store (HTTP 404/403, or no such file)."""

    reason = "missing-object"


def error_code(response: urllib3.BaseHTTPResponse) -> str:
    """S3's error code from an error response's XML body (NoSuchBucket, NoSuchKey, AccessDenied), or ""."""
    try:
        body = response.read(4096, decode_content=True)
    except (urllib3.exceptions.HTTPError, ConnectionError):
        return ""
    match = re.search(rb"<Code>([A-Za-z]+)</Code>", body or b"")
    return match.group(1).decode() if match else ""


def is_http(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https")


def local_path(url: str) -> Path:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)


def join(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/{key}"


class Fetcher(FetcherInterface):
    """python-tuf's fetcher for http(s) URLs (urllib3, no automatic retries) and local paths."""

    def __init__(self, timeout: float = 10.0, checkpoint: Callable[[str], None] | None = None) -> None:
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=timeout, read=timeout))
        self.checkpoint = checkpoint or (lambda step: None)
        self.resumes = 0  # resumed downloads in this fetcher's lifetime, counted as they happen (kept when one finally fails)

    # --- python-tuf's interface (metadata) --------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not is_http(url):
            path = local_path(url)
            if not path.is_file():
                raise tuf_exceptions.DownloadHTTPError(f"{path}: no such file", 404)
            return self._file_chunks(path, 0)
        try:
            response = self.http.request("GET", url, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_exceptions.DownloadError(f"{url}: {exc}") from exc
        if response.status >= 400:
            code = error_code(response)
            response.release_conn()
            raise tuf_exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}{' ' + code if code else ''}", response.status)
        return self._response_chunks(response, url)

    @staticmethod
    def _file_chunks(path: Path, offset: int) -> Iterator[bytes]:
        with open(path, "rb") as fh:
            fh.seek(offset)
            while chunk := fh.read(CHUNK):
                yield chunk

    @staticmethod
    def _response_chunks(response: urllib3.BaseHTTPResponse, url: str) -> Iterator[bytes]:
        """The body in chunks; a connection cut mid-body is python-tuf's DownloadError (which the
        agent reports and retries), never a urllib3 exception escaping the update."""
        try:
            yield from response.stream(CHUNK)
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise tuf_exceptions.DownloadError(f"{url}: connection dropped mid-body ({type(exc).__name__})") from exc
        finally:
            response.release_conn()

    # --- model objects: resumable, bounded ------------------------------------------------

    def download(self, url: str, part: Path, length: int, max_resumes: int = 5, backoff_s: float = 0.2) -> int:
        """Download `url` into `part` until it holds exactly `length` bytes; returns the number
        of resumes it took. Bytes already in `part` (an earlier attempt, or a run that was
        killed) are kept and the rest is asked for with a Range request.

        Raises EndlessData past `length`, Unreachable/Missing when the store fails, Interrupted
        when the connection keeps dropping.
        """
        part = Path(part)
        resumes = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            if offset > length:  # not ours: start again
                part.unlink()
                offset = 0
            if offset == length:
                return resumes
            try:
                self._fetch_from(url, part, offset, length)
            except Interrupted:
                resumes += 1
                self.resumes += 1
                if resumes > max_resumes:
                    raise
                time.sleep(min(backoff_s * 2 ** (resumes - 1), 5.0))

    def _fetch_from(self, url: str, part: Path, offset: int, length: int) -> None:
        if not is_http(url):
            path = local_path(url)
            if not path.is_file():
                raise Missing(f"{path}: no such object")
            size = path.stat().st_size
            if size > length:
                raise EndlessData(f"{path} is {size} bytes, more than the {length} signed")
            self._write(self._file_chunks(path, offset), part, offset, length, url)
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = self.http.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(f"{url}: {exc}") from exc
        try:
            if response.status in (403, 404):
                code = error_code(response)
                raise Missing(f"{url}: HTTP {response.status}{' ' + code if code else ''}")
            if response.status == 416:  # the object is shorter than what we hold: start over
                part.unlink(missing_ok=True)
                raise Interrupted(f"{url}: range {offset}- not satisfiable; restarting")
            if response.status >= 400:
                raise Unreachable(f"{url}: HTTP {response.status}")
            if response.status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != offset:
                    raise Interrupted(f"{url}: bad Content-Range {response.headers.get('Content-Range')!r} for offset {offset}")
                if match.group(3) != "*" and int(match.group(3)) > length:
                    raise EndlessData(f"{url} is {match.group(3)} bytes, more than the {length} signed")
            elif offset:  # 200 to a Range request: the server sends it all again
                part.unlink(missing_ok=True)
                offset = 0
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and offset + int(declared) > length:
                raise EndlessData(f"{url} offers {offset + int(declared)} bytes, more than the {length} signed")
            try:
                self._write(response.stream(CHUNK), part, offset, length, url)
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.DecodeError, ConnectionError) as exc:
                raise Interrupted(f"{url}: connection dropped after {part.stat().st_size if part.exists() else 0} bytes ({type(exc).__name__})") from exc
        finally:
            response.release_conn()

    def _write(self, chunks: Iterator[bytes], part: Path, offset: int, length: int, url: str) -> None:
        part.parent.mkdir(parents=True, exist_ok=True)
        written = offset
        with open(part, "ab" if offset else "wb") as fh:
            try:
                for chunk in chunks:
                    if written + len(chunk) > length:
                        raise EndlessData(f"{url}: more than the {length} bytes signed arrived; cut off")
                    fh.write(chunk)
                    written += len(chunk)
                    fh.flush()
                    self.checkpoint("download-partial")
            finally:
                fh.flush()
                os.fsync(fh.fileno())
        if written < length:
            raise Interrupted(f"{url}: stream ended after {written} of {length} bytes")
