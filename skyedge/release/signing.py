"""ed25519 keys and detached signatures (ARCHITECTURE §5), failing closed.

A signature document is a small JSON-able dict `{"algorithm", "key_id", "signature"}` kept beside
the bytes it signs. Verification refuses anything it does not fully understand: another
algorithm, a key other than the trusted one, a malformed document or a bad signature.

Keys live in files outside the repository's tracked content: `.skyedge/signing_key.pem` under the
current directory (gitignored) or the path in `SKYEDGE_SIGNING_KEY`. Device side: stdlib and
`cryptography` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "ed25519"
KEY_ENV_VAR = "SKYEDGE_SIGNING_KEY"
DEFAULT_KEY_PATH = Path(".skyedge/signing_key.pem")
SIGNATURE_DOC_KEYS = frozenset({"algorithm", "key_id", "signature"})
_SIGNATURE_BYTES = 64
# A key file is a few hundred bytes; refuse to slurp anything absurd someone points us at.
_MAX_KEY_FILE_BYTES = 64 * 1024


class SigningError(ValueError):
    """A key could not be loaded or a signature did not verify; the reason says which."""


def key_path_from_env() -> Path:
    """The private key path: `$SKYEDGE_SIGNING_KEY` when set and non-empty, else the default."""
    value = os.environ.get(KEY_ENV_VAR, "").strip()
    return Path(value) if value else DEFAULT_KEY_PATH


def _read_key_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_KEY_FILE_BYTES:
            raise SigningError(f"{path}: key file is {size} bytes, not a PEM key")
        return path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read key file ({exc.strerror or exc})") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an existing unencrypted PEM ed25519 private key; never creates one."""
    path = Path(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: private key is {type(key).__name__}, expected ed25519")
    return key


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the private key at `path`, generating it (mode 0o600) on first use.

    The new key is written to a temporary file in the same directory and then linked into place,
    so a crash never leaves half a key and two first uses racing never overwrite each other's key.
    """
    path = Path(path)
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # O_EXCL + 0o600 at creation: the key is never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and refuses to clobber a key created meanwhile
        except FileExistsError:
            return load_private_key(path)
        except OSError:
            os.replace(tmp, path)  # filesystems without hard links
    finally:
        tmp.unlink(missing_ok=True)
    return key


def public_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of the key's public half (what devices are given)."""
    return private_key.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM ed25519 public key; anything else is a SigningError naming the file."""
    path = Path(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: public key is {type(key).__name__}, expected ed25519")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 hex of the raw 32-byte public key: a stable name for the key."""
    raw = public_key.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()


def sign(data: bytes, private_key: Ed25519PrivateKey) -> dict[str, str]:
    """A detached signature document over exactly `data`."""
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(data)).decode("ascii"),
    }


def verify_signature(data: bytes, signature_doc: Any, public_key: Ed25519PublicKey) -> None:
    """Raise SigningError unless `signature_doc` is a valid signature of `data` by `public_key`."""
    if not isinstance(signature_doc, dict):
        raise SigningError(
            f"malformed signature document: expected an object, got {type(signature_doc).__name__}"
        )
    missing = sorted(SIGNATURE_DOC_KEYS - signature_doc.keys())
    if missing:
        raise SigningError(f"malformed signature document: missing {', '.join(missing)}")
    unknown = sorted(signature_doc.keys() - SIGNATURE_DOC_KEYS)
    if unknown:
        raise SigningError(f"malformed signature document: unknown keys {', '.join(unknown)}")
    algorithm = signature_doc["algorithm"]
    if algorithm != ALGORITHM:
        raise SigningError(f"unsupported signature algorithm {algorithm!r}: only {ALGORITHM!r}")
    trusted = key_id(public_key)
    signer = signature_doc["key_id"]
    if signer != trusted:
        raise SigningError(
            f"key id mismatch: signed by key {str(signer)[:16]}…, trusted key is {trusted[:16]}…"
        )
    encoded = signature_doc["signature"]
    if not isinstance(encoded, str):
        raise SigningError("malformed signature document: signature is not a base64 string")
    try:
        signature = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise SigningError(f"malformed signature document: signature is not base64 ({exc})") from exc
    if len(signature) != _SIGNATURE_BYTES:
        raise SigningError(
            f"malformed signature document: signature is {len(signature)} bytes, "
            f"expected {_SIGNATURE_BYTES}"
        )
    try:
        public_key.verify(signature, data)
    except InvalidSignature as exc:
        raise SigningError(
            "bad signature: the signed bytes were changed after signing or signed by another key"
        ) from exc
