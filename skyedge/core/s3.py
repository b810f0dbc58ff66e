"""The one way SkyEdge talks to S3: URLs, the boto3 client, and what an error means.

Ingest sources (skyedge.data.sources) and the registry's object store (skyedge.release.store) both
read `s3://bucket/prefix` URLs, make their client here and turn botocore's many exception types
into one `S3Failure` kind with a message that says what to check. boto3 is imported inside the
functions: nothing connects, or even loads, until a caller asks for S3.

Endpoint, region and credentials follow the standard AWS environment unless given
(AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_PROFILE).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

ENDPOINT_ENV_VAR = "AWS_ENDPOINT_URL"
MISSING_BUCKET = "missing-bucket"
NOT_FOUND = "not-found"
ACCESS_DENIED = "access-denied"
NO_CREDENTIALS = "no-credentials"
UNREACHABLE = "unreachable"
OTHER = "other"
_DENIED_CODES = ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled")


def split_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix/") of an s3:// URL; the prefix is empty or ends with "/"."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r}: not an s3:// URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{url!r}: an S3 URL is s3://BUCKET[/PREFIX]")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def make_client(endpoint_url: str | None = None, region: str | None = None, profile: str | None = None, attempts: int = 3) -> Any:
    """A boto3 S3 client; None fields fall back to the AWS environment and config files.

    Callers retry whole objects themselves; botocore's standard mode covers throttling. A station
    passes attempts=1: its next cycle is the retry, and backing off inside one cycle would only
    hold up its forecasts while the store is down.
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
    config = Config(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV_VAR) or None
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


@dataclass(frozen=True)
class S3Failure:
    """What went wrong, as one of the kinds above, and a sentence that says what to check."""

    kind: str
    code: str
    advice: str


def classify(error: Exception, bucket: str, endpoint: str | None = None) -> S3Failure:
    """Map a botocore exception to a kind and advice. Unknown exceptions are kind `other`."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    where = f" at {endpoint}" if endpoint else ""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return S3Failure(MISSING_BUCKET, code, f"bucket {bucket!r} does not exist{where}: create it, or check the bucket name and the endpoint (--endpoint-url / AWS_ENDPOINT_URL)")
        if code in ("NoSuchKey", "404", "NotFound"):
            return S3Failure(NOT_FOUND, code, "no such object")
        if code in _DENIED_CODES:
            return S3Failure(ACCESS_DENIED, code, f"access denied to bucket {bucket!r} ({code}): check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy")
        return S3Failure(OTHER, code, f"S3 error {code}: {error}")
    if isinstance(error, NoCredentialsError):
        return S3Failure(NO_CREDENTIALS, "", "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    if isinstance(error, EndpointConnectionError):
        return S3Failure(UNREACHABLE, "", f"cannot reach the endpoint{where}: check --endpoint-url / AWS_ENDPOINT_URL and the network")
    if isinstance(error, BotoCoreError):
        return S3Failure(UNREACHABLE, "", f"{error}; check the endpoint{where} and the network")
    return S3Failure(OTHER, "", str(error))


def client_errors() -> tuple[type[Exception], ...]:
    """The exception types an S3 call raises (for `except`), imported only when S3 is used."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)
