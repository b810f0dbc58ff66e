"""Entropy coding for the model container (skyedge.release.container): symbol streams and tensor codings.

Device side: numpy, zstandard and constriction only. Every decoder raises ValueError naming what
is wrong with its input; the container turns that into a ContainerError naming the tensor.

A *symbol stream* codes a sequence of symbols in 0..255 (codebook indices or relative indices):

    table    varint A (the alphabet: largest symbol + 1, 0 for no symbols), then A varint counts,
             how often each symbol occurs (the stream's length is their sum)
    payload  `huffman`: constriction's QueueEncoder bits with a Huffman tree built from the counts
             of the symbols that occur, as uint32 words (zero padded);
             `ans`: constriction's AnsCoder words with a Categorical model (perfect=False) of the
             same counts; `constant`: nothing (at most one symbol occurs: the table says it all).

Varints are unsigned LEB128, words little-endian uint32. The encoder codes each stream with both
coders and keeps the smaller (Huffman wins on short or near-dyadic streams, ANS elsewhere); the
container records which. Both models are rebuilt from the stored counts, so encoder and decoder
hold the same float64 weights; a constriction that built another tree from them would be caught
by each tensor's sha256, which is why constriction is pinned.

A *tensor coding* turns the raw_data of a float32 tensor (n little-endian words, handled as bit
patterns so -0.0 and NaN payloads survive) into one byte string; `encode_tensor` keeps the
smallest of:

    shared  (at most 256 distinct non-zero bit patterns: weight sharing, Han et al. 2016)
            codebook  k uint32 words, the distinct non-zero patterns in ascending order
            gaps      stream of relative indices, present when some entry is zero (pattern 0): each
                      non-zero preceded by g zeros is written as g // 255 filler symbols 255 (each
                      255 zeros, no entry) then the symbol g % 255; zeros after the last non-zero
                      are implied by n
            indices   stream of each non-zero's position in the codebook
    planes  byte planes (byte 0 of every word, then byte 1, ...), zstd level 19: float exponents
            line up, which zstd finds better than in the interleaved words
    raw     the bytes themselves, for tensors nothing above shrinks
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import constriction
import numpy as np
import zstandard

ALPHABET = 256  # symbols are bytes: codebook indices and relative indices
GAP_FILLER = ALPHABET - 1  # a relative index meaning "255 zeros, and no entry yet"
ZSTD_LEVEL = 19
_WORD = np.dtype("<u4")


def put_varints(values: list[int]) -> bytes:
    """Unsigned LEB128 of each value, concatenated."""
    out = bytearray()
    for value in values:
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The LEB128 varint at data[pos:] and the position after it (also protobuf's varint)."""
    value = 0
    for shift in range(0, 64, 7):
        if pos >= len(data):
            raise ValueError("varint runs past the end of its data")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise ValueError("varint longer than 64 bits")


def raw_content_dict(content: bytes | None) -> zstandard.ZstdCompressionDict | None:
    """`content` as a zstd dictionary of raw content (zstd's "patch from"), None for none."""
    return zstandard.ZstdCompressionDict(content, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if content else None


def zstd_compress(data: bytes, dictionary: bytes | None = None) -> bytes:
    """A zstd frame (level 19) of data, with `dictionary` as raw content when given."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=raw_content_dict(dictionary)).compress(data)


def zstd_decompress(blob: bytes, size: int, dictionary: bytes | None = None) -> bytes:
    """The frame's content, which must be exactly `size` bytes: checked before anything is allocated."""
    try:
        if zstandard.frame_content_size(blob) != size:
            raise ValueError(f"zstd frame does not hold {size} bytes")
        return zstandard.ZstdDecompressor(dict_data=raw_content_dict(dictionary)).decompress(blob, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd frame does not decompress ({exc})") from exc


class Coder(NamedTuple):
    """An entropy coder over ranks 0..m-1 whose weights (counts, all > 0, m >= 2) both sides know."""

    encode: Callable[[np.ndarray, np.ndarray], bytes]
    decode: Callable[[bytes, np.ndarray, int], np.ndarray]


def _words(payload: bytes) -> np.ndarray:
    if len(payload) % 4:
        raise ValueError(f"payload of {len(payload)} bytes is not whole 32-bit words")
    return np.frombuffer(payload, _WORD).astype(np.uint32)


def _huffman_encode(ranks: np.ndarray, weights: np.ndarray) -> bytes:
    tree = constriction.symbol.huffman.EncoderHuffmanTree(weights)
    encoder = constriction.symbol.QueueEncoder()
    for rank in ranks.tolist():  # constriction codes Huffman symbols one at a time (~0.1 µs each)
        encoder.encode_symbol(rank, tree)
    words, _bits = encoder.get_compressed_and_bitrate()
    return words.astype(_WORD).tobytes()


def _huffman_decode(payload: bytes, weights: np.ndarray, count: int) -> np.ndarray:
    tree = constriction.symbol.huffman.DecoderHuffmanTree(weights)
    decoder = constriction.symbol.QueueDecoder(_words(payload))
    return np.array([decoder.decode_symbol(tree) for _ in range(count)], dtype=np.intp)


def _ans_encode(ranks: np.ndarray, weights: np.ndarray) -> bytes:
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(ranks.astype(np.int32), constriction.stream.model.Categorical(weights, perfect=False))
    return coder.get_compressed().astype(_WORD).tobytes()


def _ans_decode(payload: bytes, weights: np.ndarray, count: int) -> np.ndarray:
    coder = constriction.stream.stack.AnsCoder(_words(payload))
    ranks = coder.decode(constriction.stream.model.Categorical(weights, perfect=False), count)
    # An ANS stream decoded to its end leaves the coder empty; anything left means other data.
    if not coder.is_empty():
        raise ValueError("ans stream has data left over after its symbols")
    return ranks.astype(np.intp)


CODERS: dict[str, Coder] = {"huffman": Coder(_huffman_encode, _huffman_decode), "ans": Coder(_ans_encode, _ans_decode)}


def code_with_each(symbols: np.ndarray) -> tuple[bytes, dict[str, bytes]]:
    """The stream's table and, when two or more symbols occur, each coder's payload by name."""
    counts = np.bincount(symbols)
    table = put_varints([len(counts), *counts.tolist()])
    used = np.flatnonzero(counts)
    if len(used) < 2:
        return table, {}
    ranks = np.searchsorted(used, symbols)
    weights = counts[used].astype(np.float64)
    return table, {name: coder.encode(ranks, weights) for name, coder in CODERS.items()}


def encode_stream(symbols: np.ndarray) -> tuple[str, bytes]:
    """(coder name, stream bytes) of symbols in 0..255, with the smaller of Huffman and ANS."""
    table, payloads = code_with_each(symbols)
    if not payloads:
        return "constant", table
    best = min(payloads, key=lambda name: len(payloads[name]))
    return best, table + payloads[best]


def decode_stream(stream: bytes, coder: str, max_symbols: int) -> np.ndarray:
    """The symbols of a stream written by encode_stream; refuses one claiming more than max_symbols."""
    alphabet, pos = read_varint(stream, 0)
    if alphabet > ALPHABET:
        raise ValueError(f"stream alphabet of {alphabet} symbols exceeds {ALPHABET}")
    counts = []
    for _ in range(alphabet):
        count, pos = read_varint(stream, pos)
        counts.append(count)
    total = sum(counts)
    if total > max_symbols:
        raise ValueError(f"stream claims {total} symbols, at most {max_symbols} fit")
    used = np.flatnonzero(np.array(counts, dtype=np.int64))
    payload = stream[pos:]
    if coder == "constant":
        if len(used) > 1 or payload:
            raise ValueError("constant stream with more than one symbol or a payload")
        return np.full(total, used[0] if len(used) else 0, dtype=np.intp)
    if coder not in CODERS or len(used) < 2:
        raise ValueError(f"coder {coder!r} unknown, or given fewer than two symbols")
    ranks = CODERS[coder].decode(payload, np.array(counts, dtype=np.float64)[used], total)
    return used[ranks]


def gap_symbols(positions: np.ndarray) -> np.ndarray:
    """Relative indices (module docstring) of ascending positions of the non-zero entries."""
    gaps = np.diff(positions, prepend=-1) - 1
    fillers, rests = np.divmod(gaps, GAP_FILLER)
    ends = np.cumsum(fillers + 1)
    symbols = np.full(int(ends[-1]) if len(ends) else 0, GAP_FILLER, dtype=np.intp)
    symbols[ends - 1] = rests
    return symbols


def gap_positions(symbols: np.ndarray, size: int) -> np.ndarray:
    """The positions that relative indices name, refusing any past `size` entries."""
    steps = np.where(symbols == GAP_FILLER, GAP_FILLER, symbols.astype(np.int64) + 1)
    ends = np.cumsum(steps)
    if len(ends) and ends[-1] > size:
        raise ValueError(f"relative indices run past the tensor's {size} entries")
    return ends[symbols != GAP_FILLER] - 1


def _shared(words: np.ndarray, codebook: np.ndarray) -> tuple[dict[str, Any], bytes]:
    nonzero = words != 0
    parts, fields = [codebook.astype(_WORD).tobytes()], {"codebook": len(codebook)}
    if not nonzero.all():
        coder, stream = encode_stream(gap_symbols(np.flatnonzero(nonzero)))
        parts.append(stream)
        fields["gaps"] = [coder, len(stream)]
    coder, stream = encode_stream(np.searchsorted(codebook, words[nonzero]))
    parts.append(stream)
    fields["indices"] = [coder, len(stream)]
    return fields, b"".join(parts)


def encode_tensor(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(header fields, coded bytes) of a float32 tensor's raw_data, in its smallest coding."""
    words = np.frombuffer(raw, _WORD)
    patterns = np.unique(words)
    candidates = [({"coding": "raw"}, raw), ({"coding": "planes"}, zstd_compress(words.view(np.uint8).reshape(-1, 4).T.tobytes()))]
    codebook = patterns[patterns != 0]
    if len(codebook) <= ALPHABET:
        fields, data = _shared(words, codebook)
        candidates.append(({"coding": "shared", **fields}, data))
    fields, data = min(candidates, key=lambda candidate: len(candidate[1]))
    stats = {"nonzero": int(np.count_nonzero(words)), "distinct": len(patterns)}
    return {**fields, **stats, "bytes": len(data)}, data


def decode_tensor(fields: dict[str, Any], data: bytes, length: int) -> bytes:
    """The `length` raw bytes that encode_tensor coded as `fields` and `data`."""
    if length % 4 or len(data) != fields["bytes"]:
        raise ValueError(f"{length} bytes is not whole float32 words, or the coded size is not {fields['bytes']}")
    size = length // 4
    if fields["coding"] == "raw":
        if len(data) != length:
            raise ValueError(f"raw coding holds {len(data)} bytes, not {length}")
        return data
    if fields["coding"] == "planes":
        return np.frombuffer(zstd_decompress(data, length), np.uint8).reshape(4, size).T.tobytes()
    if fields["coding"] != "shared":
        raise ValueError(f"unknown coding {fields['coding']!r}")
    k, nonzero = fields["codebook"], fields["nonzero"]
    if not 0 <= k <= ALPHABET or not 0 <= nonzero <= size or 4 * k > len(data):
        raise ValueError(f"codebook of {k} or {nonzero} non-zeros does not fit a tensor of {size}")
    codebook, pos = np.frombuffer(data[: 4 * k], _WORD), 4 * k
    positions = slice(None)
    if nonzero < size:
        coder, nbytes = fields["gaps"]
        positions = gap_positions(decode_stream(data[pos : pos + nbytes], coder, size), size)
        pos += nbytes
        if len(positions) != nonzero:
            raise ValueError(f"relative indices name {len(positions)} entries, not {nonzero}")
    coder, nbytes = fields["indices"]
    if pos + nbytes != len(data):
        raise ValueError("the codebook and streams do not add up to the coded size")
    indices = decode_stream(data[pos:], coder, nonzero)
    if len(indices) != nonzero or (len(indices) and indices.max() >= k):
        raise ValueError(f"codebook indices are not {nonzero} positions in a codebook of {k}")
    words = np.zeros(size, _WORD)
    words[positions] = codebook[indices]
    return words.tobytes()
