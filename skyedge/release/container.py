"""The model container `model.skc`: model.onnx coded so a station rebuilds it bit for bit, and deltas.

"Deep Compression" style (weight sharing + entropy coding, Han et al. 2016) without touching the
graph: the float32 initializers' raw_data is cut out of model.onnx and coded (skyedge.release.coding),
the rest, the *skeleton*, is zstd-compressed, and decoding splices the rebuilt bytes back at their
offsets. The signed manifest hashes model.onnx, not the container, so a decoder returns bytes only
once their sha256 equals the hash the caller expects. Publisher side (encode, encode_delta, the
baselines) imports onnx / bsdiff4 lazily; device side (decode, apply_delta, inspect) needs only
numpy, zstandard, constriction and the stdlib.

File format, version 1 (integers little-endian; a delta has the same format, with kind "delta"):

    magic      8 bytes  b"\\x89SKC\\r\\n\\x1a\\n" (PNG's trick: text-mode or 7-bit transfers break it)
    version    uint16   FORMAT_VERSION
    header     uint32 n, uint32 m, then n bytes: a zstd frame of m bytes of UTF-8 JSON, described below
    sections   the skeleton's zstd frame, then each tensor's coded bytes, in header order
    checksum   32 bytes: sha256 of everything before it

Header: {"kind": "container" | "delta", "size": bytes of model.onnx, "sha256": its hex hash,
"skeleton": {"size": bytes, "bytes": zstd frame bytes}, "tensors": [entry, ...]} and, in a delta,
"base": {"sha256", "size", "spans": [[offset, length], ...]} naming the base model.onnx and the spans
cut from it to make the skeleton's zstd dictionary (raw content, i.e. "patch from").

Entry, in order of offset: {"name", "shape", "offset": where raw_data starts in model.onnx,
"length": its bytes, "sha256": their hash, "coding", "bytes": coded bytes in sections} plus, for
codings shared / planes / raw, "nonzero" and "distinct" (bit patterns) and the coding's fields
(coding.py: shared has "codebook": k, "gaps": [coder, bytes] when some entry is zero, "indices":
[coder, bytes]); coding "base" (deltas only) has "base_offset" and no section bytes: the entry's
bytes are the base's, unchanged. Skeleton = model.onnx without the entries' spans.

Coded: each graph initializer (ModelProto field 7, GraphProto field 5) whose float32 raw_data
(TensorProto field 9) is at least MIN_CODED_BYTES long and sits where walking the protobuf wire
format says, byte for byte as onnx parses it. Everything else (other dtypes, small tensors,
subgraphs, Constant nodes, external data) stays in the skeleton.

Decoding checks, each failing with a ContainerError that names the rule: magic, version, checksum,
header, the base's sha256 (delta), the header's model hash against the expected one, then per
tensor its coded sizes and sha256, then the rebuilt model's size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import zstandard

from skyedge.release.coding import ZSTD_LEVEL, decode_tensor, encode_tensor, raw_content_dict, read_varint, zstd_compress, zstd_decompress

FORMAT_VERSION = 1
MAGIC = b"\x89SKC\r\n\x1a\n"
# Measured: below ~2 KiB a tensor's header entry costs more than its coding saves over zstd in the skeleton.
MIN_CODED_BYTES = 2048
# Upper bounds on what a decoder builds before the result's hash can be checked.
MAX_MODEL_BYTES = 1 << 30
MAX_HEADER_BYTES = 16 << 20
_PREAMBLE = struct.Struct("<HII")  # version, header zstd bytes, header JSON bytes
_CHECKSUM_BYTES = 32
T = TypeVar("T")


class ContainerError(ValueError):
    """A container or delta was refused; the message names the rule it broke."""


class Span(NamedTuple):
    """A float32 initializer's raw_data in model.onnx."""

    name: str
    shape: list[int]
    offset: int
    length: int


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wire_fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each field of the protobuf message data[start:end]."""
    pos = start
    while pos < end:
        key, pos = read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value_end = read_varint(data, pos)[1]
        elif wire == 2:
            length, pos = read_varint(data, pos)
            value_end = pos + length
        elif wire in (1, 5):
            value_end = pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire} at byte {pos}")
        if value_end > end:
            raise ValueError(f"field {field} runs past its message at byte {pos}")
        yield field, wire, pos, value_end
        pos = value_end


def _raw_data_spans(model: bytes) -> list[list[tuple[int, int]]]:
    """Per graph initializer, in order, the (start, end) of each raw_data field it holds."""
    found = []
    for field, wire, start, end in _wire_fields(model, 0, len(model)):
        if (field, wire) == (7, 2):
            for field2, wire2, start2, end2 in _wire_fields(model, start, end):
                if (field2, wire2) == (5, 2):
                    found.append([(s, e) for f, w, s, e in _wire_fields(model, start2, end2) if (f, w) == (9, 2)])
    return found


def tensor_spans(model: bytes) -> list[Span]:
    """The float32 initializers to code, at byte spans checked against onnx's own parse (publisher side)."""
    import onnx  # lazily: the device side never parses ONNX
    from google.protobuf.message import DecodeError

    try:
        initializers = onnx.load_from_string(model).graph.initializer
    except DecodeError as exc:
        raise ContainerError(f"model: not an ONNX model ({exc})") from exc
    try:
        walked = _raw_data_spans(model)
    except ValueError:  # wire format this walk does not know (e.g. groups): everything stays in the skeleton
        return []
    if len(walked) != len(initializers):  # our walk and onnx disagree: code nothing rather than guess
        return []
    spans = []
    for tensor, found in zip(initializers, walked):
        if tensor.data_type != onnx.TensorProto.FLOAT or len(found) != 1:
            continue
        start, end = found[0]
        if end - start >= MIN_CODED_BYTES and end - start == 4 * math.prod(tensor.dims) and model[start:end] == tensor.raw_data:
            spans.append(Span(tensor.name, list(tensor.dims), start, end - start))
    return spans


def _cut(model: bytes, spans: list[tuple[int, int]]) -> bytes:
    """model without the (offset, length) spans, which must be ascending and inside it."""
    pieces, end = [], 0
    for offset, length in spans:
        if offset < end or length < 0 or offset + length > len(model):
            raise ContainerError(f"span at {offset} overlaps the previous one or runs past the {len(model)}-byte model")
        pieces.append(model[end:offset])
        end = offset + length
    pieces.append(model[end:])
    return b"".join(pieces)


def _splice(skeleton: bytes, pieces: list[tuple[int, bytes]], size: int) -> bytes:
    """The `size`-byte model with each piece's bytes put back at its offset into the skeleton."""
    out, used, end = [], 0, 0
    for offset, data in pieces:
        keep = offset - end
        if keep < 0 or used + keep > len(skeleton):
            raise ContainerError(f"tensor at offset {offset} overlaps the previous one or lies past the skeleton")
        out += [skeleton[used : used + keep], data]
        used, end = used + keep, offset + len(data)
    out.append(skeleton[used:])
    model = b"".join(out)
    if len(model) != size:
        raise ContainerError(f"rebuilt model has {len(model)} bytes, the header says {size}")
    return model


def _code_tensors(model: bytes, spans: list[Span], base: dict[str, int]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Header entries and coded sections of the spans; a span whose hash is a key of `base` refers to the base's offset instead."""
    entries, sections = [], []
    for span in spans:
        raw = model[span.offset : span.offset + span.length]
        entry = {**span._asdict(), "sha256": _sha256(raw)}
        if entry["sha256"] in base:
            entries.append({**entry, "coding": "base", "base_offset": base[entry["sha256"]], "bytes": 0})
            continue
        fields, data = encode_tensor(raw)
        entries.append({**entry, **fields})
        sections.append(data)
    return entries, sections


def _pack(header: dict[str, Any], sections: list[bytes]) -> bytes:
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    head = zstd_compress(text)
    body = MAGIC + _PREAMBLE.pack(FORMAT_VERSION, len(head), len(text)) + head + b"".join(sections)
    return body + hashlib.sha256(body).digest()


def _unpack(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and the sections of a container or delta whose magic, version and checksum hold."""
    start = len(MAGIC) + _PREAMBLE.size
    if len(blob) < start + _CHECKSUM_BYTES or blob[: len(MAGIC)] != MAGIC:
        raise ContainerError("not a SkyEdge container (magic bytes missing)")
    version, head_bytes, text_bytes = _PREAMBLE.unpack_from(blob, len(MAGIC))
    if version != FORMAT_VERSION:
        raise ContainerError(f"format version {version} is not supported (this reader: {FORMAT_VERSION})")
    if hashlib.sha256(blob[:-_CHECKSUM_BYTES]).digest() != blob[-_CHECKSUM_BYTES:]:
        raise ContainerError("container corrupted: checksum mismatch")
    head = blob[start : start + head_bytes]
    if text_bytes > MAX_HEADER_BYTES:
        raise ContainerError(f"header of {text_bytes} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    try:
        header = json.loads(zstd_decompress(head, text_bytes).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContainerError(f"header is not zstd-compressed UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("kind") not in ("container", "delta"):
        raise ContainerError("header is not an object of kind container or delta")
    return header, blob[start + head_bytes : -_CHECKSUM_BYTES]


def _check_sha256(value: Any, what: str) -> str:
    if not isinstance(value, str) or not re.fullmatch("[0-9a-f]{64}", value):
        raise ContainerError(f"{what} must be 64 lowercase hex characters, got {value!r}")
    return value


def _rebuild(header: dict[str, Any], sections: bytes, expected_sha256: str, base: bytes = b"", dictionary: bytes | None = None) -> bytes:
    """The model a checked header and its sections describe, returned only if its sha256 is expected_sha256."""
    size, skeleton = header["size"], header["skeleton"]
    if _check_sha256(header["sha256"], "header sha256") != expected_sha256:
        raise ContainerError(f"holds model sha256 {header['sha256'][:12]}…, not the expected {expected_sha256[:12]}…")
    if not 0 <= size <= MAX_MODEL_BYTES or skeleton["size"] + sum(entry["length"] for entry in header["tensors"]) != size:
        raise ContainerError(f"header sizes do not add up to a model of {size} bytes (at most {MAX_MODEL_BYTES})")
    if skeleton["bytes"] + sum(entry["bytes"] for entry in header["tensors"]) != len(sections):
        raise ContainerError(f"header sizes do not add up to the {len(sections)} section bytes")
    try:
        rebuilt = zstd_decompress(sections[: skeleton["bytes"]], skeleton["size"], dictionary)
    except ValueError as exc:
        raise ContainerError(f"skeleton: {exc}") from exc
    pieces, pos = [], skeleton["bytes"]
    for entry in header["tensors"]:
        name, offset, length = entry["name"], entry["offset"], entry["length"]
        if entry["coding"] == "base":
            start = entry["base_offset"]
            if not base or not 0 <= start <= len(base) - length:
                raise ContainerError(f"tensor {name!r}: refers to bytes outside the base (or there is no base: use apply_delta)")
            data = base[start : start + length]
        else:
            try:
                data = decode_tensor(entry, sections[pos : pos + entry["bytes"]], length)
            except ValueError as exc:
                raise ContainerError(f"tensor {name!r}: {exc}") from exc
            pos += entry["bytes"]
        if _sha256(data) != entry["sha256"]:
            raise ContainerError(f"tensor {name!r}: decoded bytes do not match its sha256 (corrupt, or coded by another coder version)")
        pieces.append((offset, data))
    model = _splice(rebuilt, pieces, size)
    if _sha256(model) != expected_sha256:
        raise ContainerError(f"rebuilt model sha256 {_sha256(model)[:12]}… is not the expected {expected_sha256[:12]}…")
    return model


def _refusing_malformed(work: Callable[[], T]) -> T:
    """work(), with a header missing a field or holding one of the wrong type refused as a ContainerError."""
    try:
        return work()
    except ContainerError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ContainerError(f"header malformed ({type(exc).__name__}: {exc})") from exc


def encode(model: bytes) -> bytes:
    """The container of model.onnx bytes (publisher side: needs onnx)."""
    spans = tensor_spans(model)
    entries, sections = _code_tensors(model, spans, base={})
    skeleton = _cut(model, [(span.offset, span.length) for span in spans])
    frame = zstd_compress(skeleton)
    header = {"kind": "container", "size": len(model), "sha256": _sha256(model), "skeleton": {"size": len(skeleton), "bytes": len(frame)}, "tensors": entries}
    return _pack(header, [frame, *sections])


def decode(container: bytes, expected_sha256: str) -> bytes:
    """The model.onnx bytes of a container, only if their sha256 is expected_sha256 (ContainerError otherwise)."""
    _check_sha256(expected_sha256, "expected_sha256")
    header, sections = _unpack(container)
    if header["kind"] != "container":
        raise ContainerError("this is a delta, not a container: use apply_delta with its base model")
    return _refusing_malformed(lambda: _rebuild(header, sections, expected_sha256))


def encode_delta(base_model: bytes, new_model: bytes) -> bytes:
    """A delta from base_model to new_model: new model's changed tensors, coded, and its skeleton against the base's (publisher side)."""
    base_spans = tensor_spans(base_model)
    base = {_sha256(base_model[span.offset : span.offset + span.length]): span.offset for span in base_spans}
    spans = tensor_spans(new_model)
    entries, sections = _code_tensors(new_model, spans, base)
    cut = [[span.offset, span.length] for span in base_spans]
    skeleton = _cut(new_model, [(span.offset, span.length) for span in spans])
    frame = zstd_compress(skeleton, dictionary=_cut(base_model, cut))
    header = {
        "kind": "delta",
        "size": len(new_model),
        "sha256": _sha256(new_model),
        "base": {"sha256": _sha256(base_model), "size": len(base_model), "spans": cut},
        "skeleton": {"size": len(skeleton), "bytes": len(frame)},
        "tensors": entries,
    }
    return _pack(header, [frame, *sections])


def apply_delta(base_model: bytes, delta: bytes, expected_sha256: str) -> bytes:
    """The new model.onnx bytes from the base's and a delta made for it, only if their sha256 is expected_sha256."""
    _check_sha256(expected_sha256, "expected_sha256")
    header, sections = _unpack(delta)
    if header["kind"] != "delta":
        raise ContainerError("this is a container, not a delta: use decode")

    def rebuild() -> bytes:
        base = header["base"]
        if _sha256(base_model) != base["sha256"]:
            raise ContainerError(f"delta was made for base sha256 {str(base['sha256'])[:12]}…, not this base {_sha256(base_model)[:12]}…")
        dictionary = _cut(base_model, [(offset, length) for offset, length in base["spans"]])
        return _rebuild(header, sections, expected_sha256, base_model, dictionary)

    return _refusing_malformed(rebuild)


def inspect(container: bytes) -> list[dict[str, Any]]:
    """Per coded tensor of a container (or delta): name, shape, elements, sparsity, distinct values and bits, coding, bytes."""
    header = _unpack(container)[0]

    def row(entry: dict[str, Any]) -> dict[str, Any]:
        elements, k = entry["length"] // 4, entry.get("codebook")
        streams = [f"{part}:{entry[part][0]}" for part in ("gaps", "indices") if part in entry]
        return {
            "name": entry["name"],
            "shape": entry["shape"],
            "elements": elements,
            "sparsity": 1 - entry["nonzero"] / elements if "nonzero" in entry else None,
            "distinct": entry.get("distinct"),
            "bits": math.ceil(math.log2(k)) if k else None,
            "coding": " ".join([entry["coding"], *streams]),
            "raw_bytes": entry["length"],
            "coded_bytes": entry["bytes"],
        }

    return _refusing_malformed(lambda: [row(entry) for entry in header["tensors"]])


def bsdiff_size(old: bytes, new: bytes) -> int:
    """Bytes of a bsdiff4 patch from old to new: the generic binary-delta baseline (publisher side)."""
    import bsdiff4

    return len(bsdiff4.diff(old, new))


def zstd_patch_size(old: bytes, new: bytes) -> int:
    """Bytes of new zstd-compressed (level 19) with old as raw-content dictionary: zstd's --patch-from baseline."""
    # The window must reach back over the whole dictionary, or matches far into old are lost.
    params = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, source_size=len(new), dict_size=len(old), window_log=max(10, (len(old) + len(new)).bit_length()))
    return len(zstandard.ZstdCompressor(dict_data=raw_content_dict(old), compression_params=params).compress(new))
