"""S3 sources: download an `s3://bucket/prefix` into a local cache, then read it as a folder.

The boto3 client is made by the caller (the ingest stage), never at import. Endpoint, region and
profile come from the `S3Source` params, else from the standard AWS environment (boto3 reads
AWS_ENDPOINT_URL, AWS_REGION/AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY itself).

A missing bucket or denied access is an `S3SourceError` naming the source and what to check. An
object whose download fails is retried `attempts` times with exponential backoff, then left out of
the cache and returned as a failure, which the stage quarantines under `object_downloaded`
(whole-file rule: row empty) so that received = accepted + quarantined still holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

DOWNLOAD_RULE = "object_downloaded"


class S3SourceError(RuntimeError):
    """An S3 source cannot be read at all (missing bucket, access denied, bad endpoint)."""


@dataclass
class Download:
    folder: Path
    objects: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (s3 url, reason)


def split_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix/") of an s3:// URL; the prefix is empty or ends with "/"."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r}: not an s3:// URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def make_client(endpoint_url: str | None = None, region: str | None = None, profile: str | None = None):
    """A boto3 S3 client; None fields fall back to the AWS environment and config files."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
    # Our own retry loop handles object failures; botocore's standard mode covers throttling.
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _explain(error: Exception, url: str) -> S3SourceError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404"):
            return S3SourceError(f"ingest source {url}: bucket not found; check the bucket name and the endpoint/region (endpoint_url, AWS_ENDPOINT_URL, AWS_REGION)")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return S3SourceError(f"ingest source {url}: access denied ({code}); check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket policy")
        return S3SourceError(f"ingest source {url}: S3 error {code}: {error}")
    if isinstance(error, NoCredentialsError):
        return S3SourceError(f"ingest source {url}: no AWS credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    if isinstance(error, EndpointConnectionError):
        return S3SourceError(f"ingest source {url}: cannot reach the endpoint; check endpoint_url / AWS_ENDPOINT_URL")
    return S3SourceError(f"ingest source {url}: {error}")


def list_objects(client, url: str) -> list[tuple[str, int]]:
    """(key, size) of every object under the prefix; a clear S3SourceError when that is impossible."""
    bucket, prefix = split_url(url)
    try:
        client.head_bucket(Bucket=bucket)
        objects = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
    except Exception as error:  # botocore raises many types; each is explained by _explain
        raise _explain(error, url) from error
    return objects


def download(client, url: str, cache: Path, attempts: int = 3, backoff_seconds: float = 0.5, progress: bool = True) -> Download:
    """Mirror the prefix into cache (keys relative to the prefix); skip objects already there with
    the same size. Failed objects are retried, then reported in `failed`, never raised."""
    from tqdm import tqdm

    bucket, prefix = split_url(url)
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
