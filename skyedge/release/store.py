"""A tiny object store (ARCHITECTURE §6): a local directory or an S3 bucket, one key layout.

Keys are relative POSIX paths (`models/7/model.onnx`). `LocalStore` is the embedded default: the
object with key K lives at `root/K`, written through a temporary sibling and `os.replace`, so a
reader (or a crash) never sees half an object. `S3Store` puts the same keys under
`s3://bucket/prefix/`. Both are made by `open_store(url)`.

The device agent writes its status through this too: stdlib only here; boto3 is loaded by
skyedge.core.s3, and no client exists until a caller asks for an S3 store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from skyedge.core import s3
from skyedge.core.files import atomic_write

_CHUNK = 1024 * 1024


class StoreError(RuntimeError):
    """The store could not do what was asked; the message names the bucket/dir and what to check."""


class NotFound(StoreError):
    """No object under that key."""


def check_key(key: Any) -> str:
    """Refuse keys that could escape the store root or collide with temporary files."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"object key must be a non-empty string, got {key!r}")
    if "\\" in key or "\x00" in key or key.startswith("/"):
        raise StoreError(f"object key {key!r}: no leading '/', backslash or NUL allowed")
    for part in key.split("/"):
        # Names starting with '.' are reserved for LocalStore's temporary files.
        if part in ("", ".", "..") or part.startswith("."):
            raise StoreError(f"object key {key!r}: empty, '.', '..' or dot-prefixed component")
    return key


class Store:
    """What the registry and the device agent need from an object store.

    Subclasses implement `_iter_chunks`, `put_file`, `put_bytes`, `head`, `list` and `delete`;
    reading helpers are built on `_iter_chunks`.
    """

    url: str = ""

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    def head(self, key: str) -> int:
        """Size in bytes of the object; NotFound when there is none."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with `prefix` (a plain string prefix, as in S3)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove an object if present (tests and clean-up of objects nothing points to)."""
        raise NotImplementedError

    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The whole object; with `max_bytes`, refuse objects larger than that before reading."""
        if max_bytes is not None:
            size = self.head(key)
            if size > max_bytes:
                raise StoreError(f"{self.describe(key)}: {size} bytes exceeds the {max_bytes}-byte limit")
        return b"".join(self._iter_chunks(key))

    def get_file(self, key: str, dest: Path) -> Path:
        """Download to `dest` through a temporary sibling, so `dest` is whole or absent."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(dest, lambda handle: handle.writelines(self._iter_chunks(key)))

    def stat_sha256(self, key: str) -> tuple[int, str]:
        """(size, sha256 hex) of the stored bytes, streamed: the read-back check after a write."""
        digest, size = hashlib.sha256(), 0
        for chunk in self._iter_chunks(key):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def describe(self, key: str) -> str:
        """A human-readable location of `key`, for error messages."""
        return f"{self.url.rstrip('/')}/{key}"


class LocalStore(Store):
    """Objects as files under `root`; each write is atomic (temp file + fsync + os.replace)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _write(self, key: str, write: Any) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, write)
        except OSError as exc:
            raise StoreError(f"{path}: cannot write ({exc.strerror or exc}); check that {self.root} is writable") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: Path) -> None:
        def copy(fh) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    fh.write(chunk)

        self._write(key, copy)

    def head(self, key: str) -> int:
        path = self._path(key)
        try:
            if not path.is_file():
                raise NotFound(f"{path}: no such object")
            return path.stat().st_size
        except OSError as exc:
            raise StoreError(f"{path}: cannot stat ({exc.strerror or exc})") from exc

    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"{path}: no such object") from exc
        except OSError as exc:
            raise StoreError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        with fh:
            while chunk := fh.read(_CHUNK):
                yield chunk

    def list(self, prefix: str = "") -> list[str]:
        base = self.root.joinpath(*[p for p in prefix.rpartition("/")[0].split("/") if p])
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):  # temporary files of writes in flight (or killed)
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store(Store):
    """Objects under `s3://bucket/prefix/` through a boto3 S3 client made by the caller."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._bucket_checked = False

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, key: str | None, action: str) -> StoreError:
        """Turn a botocore error into a StoreError saying which bucket and what to check."""
        where = self.describe(key) if key else self.url
        failure = s3.classify(exc, self.bucket, getattr(getattr(self.client, "meta", None), "endpoint_url", None))
        if failure.kind == s3.NOT_FOUND:
            return NotFound(f"{where}: no such object")
        if failure.kind in (s3.MISSING_BUCKET, s3.NO_CREDENTIALS):
            return StoreError(f"{where}: {failure.advice}")
        return StoreError(f"{where}: {action}: {failure.advice}")

    def _not_found(self, key: str) -> StoreError:
        """A HEAD 404 does not say whether the key or the bucket is missing: ask once."""
        if not self._bucket_checked:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except s3.client_errors() as exc:
                if s3.classify(exc, self.bucket).kind == s3.NOT_FOUND:  # head_bucket's 404 is the bucket's
                    exc.response["Error"]["Code"] = "NoSuchBucket"
                return self._error(exc, key, "head_bucket")
            self._bucket_checked = True
        return NotFound(f"{self.describe(key)}: no such object")

    def _call(self, action: str, key: str | None, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, action)(Bucket=self.bucket, **kwargs)
        except s3.client_errors() as exc:
            error = self._error(exc, key, action)
            if isinstance(error, NotFound) and key is not None:
                error = self._not_found(key)
            raise error from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put_object", key, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        # One PUT (atomic on S3: the object appears whole or not at all); models are far below 5 GB.
        with open(path, "rb") as fh:
            self._call("put_object", key, Key=self._key(key), Body=fh)

    def head(self, key: str) -> int:
        return int(self._call("head_object", key, Key=self._key(key))["ContentLength"])

    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        body = self._call("get_object", key, Key=self._key(key))["Body"]
        try:
            yield from body.iter_chunks(_CHUNK)
        except s3.client_errors() as exc:
            raise self._error(exc, key, "get_object") from exc
        finally:
            body.close()

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except s3.client_errors() as exc:
            raise self._error(exc, None, "list_objects_v2") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._call("delete_object", key, Key=self._key(key))


def open_store(url: str | Path, endpoint_url: str | None = None, client: Any = None) -> Store:
    """`s3://bucket/prefix` -> S3Store (endpoint from the argument or $AWS_ENDPOINT_URL; AWS
    itself when neither is set), anything else (a path or `file://path`) -> LocalStore."""
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{text}: an S3 store URL is s3://BUCKET[/PREFIX]")
        if client is None:
            client = s3.make_client(endpoint_url)
        return S3Store(parsed.netloc, parsed.path, client)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # 'C:' on Windows is a drive, not a scheme
        raise StoreError(f"{text}: unsupported store URL scheme {parsed.scheme!r} (use s3:// or a local path)")
    return LocalStore(Path(text))
