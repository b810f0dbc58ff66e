"""S3 sources: download an `s3://bucket/prefix` into a local cache, then read it as a folder;
and what a `skyedge ingest SOURCE` argument names (`parse_source`; the fleet store is read by
skyedge.data.fleet).

The boto3 client (skyedge.core.s3) is made by the caller, never at import. Endpoint, region and
profile come from the `S3Source` params, else from the standard AWS environment.

A missing bucket or denied access is an `S3SourceError` naming the source and what to check. An
object whose download fails is retried `attempts` times with exponential backoff, then left out of
the cache and returned as a failure, which the stage quarantines under `object_downloaded`
(whole-file rule: row empty) so that received = accepted + quarantined still holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from skyedge.core import s3
from skyedge.core.config import S3Source

DOWNLOAD_RULE = "object_downloaded"


class S3SourceError(RuntimeError):
    """An S3 source cannot be read at all (missing bucket, access denied, bad endpoint)."""


@dataclass
class Download:
    folder: Path
    objects: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (s3 url, reason)


FLEET_SCHEME = "fleet:"


def parse_source(text: str) -> dict:
    """One `skyedge ingest SOURCE` argument as an `ingest.sources` entry: `fleet:s3://BUCKET/PREFIX`
    (the fleet's observation store), `s3://BUCKET/PREFIX`, a folder, or a folder's index.csv.

    argparse's `type=Path` folds "s3://" to "s3:/"; both spellings are read.
    """
    text = str(text)
    fleet = text.startswith(FLEET_SCHEME)
    if fleet:
        text = text[len(FLEET_SCHEME) :]
    if text.startswith("s3:/"):
        text = "s3://" + text[len("s3:/") :].lstrip("/")
    if fleet:
        if not text.startswith("s3://"):
            raise ValueError(f"{FLEET_SCHEME}{text}: a fleet store is {FLEET_SCHEME}s3://BUCKET[/PREFIX]")
        return {"type": "fleet", "store": text}
    if text.startswith("s3://"):
        return {"type": "s3", "url": text}
    path = Path(text)
    if path.name == "index.csv" and path.is_file():
        return {"type": "folder", "path": str(path.parent)}
    return {"type": "folder", "path": text}


def client_for(source: S3Source):
    """The boto3 client of an `s3` ingest source (its endpoint/region/profile, else the AWS environment)."""
    return s3.make_client(source.endpoint_url, source.region, source.profile)


def cached_path(cache: Path, source_url: str, object_url: str) -> Path:
    """Where `download` puts the object at object_url (s3://bucket/key) of the source's prefix."""
    _, prefix = s3.split_url(source_url)
    key = object_url.split("/", 3)[3]
    return cache.joinpath(*PurePosixPath(key[len(prefix) :]).parts)


def check_bucket(client, url: str) -> None:
    """A clear S3SourceError when the source's bucket is missing or out of reach."""
    bucket, _ = s3.split_url(url)
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as error:  # botocore raises many types; s3.classify names each
        raise _source_error(client, url, bucket, error) from error


def _source_error(client, url: str, bucket: str, error: Exception) -> S3SourceError:
    failure = s3.classify(error, bucket, getattr(client.meta, "endpoint_url", None))
    if failure.kind == s3.NOT_FOUND:  # head_bucket's 404 is the bucket's
        failure = s3.classify(_no_such_bucket(error), bucket, getattr(client.meta, "endpoint_url", None))
    return S3SourceError(f"ingest source {url}: {failure.advice}")


def list_objects(client, url: str) -> list[tuple[str, int]]:
    """(key, size) of every object under the prefix; a clear S3SourceError when that is impossible."""
    bucket, prefix = s3.split_url(url)
    check_bucket(client, url)
    try:
        objects = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
    except Exception as error:  # botocore raises many types; s3.classify names each
        raise _source_error(client, url, bucket, error) from error
    return objects


def _no_such_bucket(error: Exception) -> Exception:
    error.response["Error"]["Code"] = "NoSuchBucket"
    return error


def download(client, url: str, cache: Path, attempts: int = 3, backoff_seconds: float = 0.5, progress: bool = True) -> Download:
    """Mirror the prefix into cache (keys relative to the prefix); skip objects already there with
    the same size. Failed objects are retried, then reported in `failed`, never raised."""
    from tqdm import tqdm

    bucket, prefix = s3.split_url(url)
    objects = list_objects(client, url)
    result = Download(folder=cache)
    cache.mkdir(parents=True, exist_ok=True)
    for key, size in tqdm(objects, desc=f"download {url}", unit="obj", disable=None if progress else True, leave=False):
        relative = PurePosixPath(key[len(prefix) :])
        if not relative.parts or key.endswith("/") or ".." in relative.parts:
            continue
        target = cache.joinpath(*relative.parts)
        result.objects += 1
        if target.is_file() and target.stat().st_size == size:
            result.bytes += size
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        reason = ""
        for attempt in range(attempts):
            try:
                client.download_file(bucket, key, str(partial))
                if partial.stat().st_size != size:
                    raise OSError(f"got {partial.stat().st_size} of {size} bytes")
                partial.replace(target)  # only a complete object ever appears under its name
                result.bytes += size
                reason = ""
                break
            except Exception as error:  # network, S3 and disk errors alike: retry, then quarantine
                reason = f"{type(error).__name__}: {error}"
                partial.unlink(missing_ok=True)
                if attempt + 1 < attempts:
                    time.sleep(backoff_seconds * 2**attempt)
        if reason:
            target.unlink(missing_ok=True)
            result.failed.append((f"s3://{bucket}/{key}", f"{attempts} attempts: {reason}"[:200]))
    return result
