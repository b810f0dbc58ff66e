"""The model container (skyedge.release.container, .coding): coders round-trip exactly, model.onnx
comes back bit for bit or not at all, and a delta carries only what changed."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from skyedge.release.coding import CODERS, GAP_FILLER, code_with_each, decode_stream, decode_tensor, encode_stream, encode_tensor, gap_positions, gap_symbols
from skyedge.release.container import MAGIC, ContainerError, apply_delta, bsdiff_size, decode, encode, encode_delta, inspect, zstd_patch_size

REPO = Path(__file__).resolve().parents[1]
SPECIAL = [0x80000000, 0x7FC00001, 0xFFFFFFFF, 0x00000001]  # -0.0, a NaN payload, another NaN, the smallest subnormal


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _symbols(k: int, n: int, skew: float, seed: int) -> np.ndarray:
    """n symbols of k, symbol i drawn with weight exp(-skew * i): skew 0 is uniform, 8 is all but one symbol."""
    weights = np.exp(-skew * np.arange(k))
    return np.random.default_rng(seed).choice(k, size=n, p=weights / weights.sum())


def _shared_weights(n: int, bits: int, sparsity: float, seed: int = 0) -> np.ndarray:
    """A weight-shared float32 tensor: 2**bits values, then a share of the entries pruned to exact zeros."""
    rng = np.random.default_rng(seed)
    weights = rng.choice(rng.standard_normal(2**bits).astype(np.float32) * 0.1, n)
    weights[rng.random(n) < sparsity] = 0
    return weights


def _model(tensors: dict[str, np.ndarray]) -> bytes:
    """A real ONNX model holding `tensors` as initializers (an Identity node keeps it valid)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    inits = [numpy_helper.from_array(array, name) for name, array in tensors.items()]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    special = _shared_weights(2048, 3, 0.3, seed).view(np.uint32)
    special[:4] = SPECIAL
    return {
        "shared": _shared_weights(20_000, 4, 0.5, seed).reshape(100, 200),
        "dense": rng.standard_normal(3000).astype(np.float32),
        "special": special.view(np.float32),
        "int8": rng.integers(-128, 128, 4096).astype(np.int8),
        "small_bias": rng.standard_normal(10).astype(np.float32),
    }


MODEL = _model(_tensors())
CONTAINER = encode(MODEL)


def _with_checksum(blob: bytes) -> bytes:
    """blob with its trailing sha256 recomputed: corruption the checksum does not catch."""
    return blob[:-32] + hashlib.sha256(blob[:-32]).digest()


# --- symbol streams and relative indices -------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 256), st.sampled_from([0, 1, 2, 50, 3000]), st.sampled_from([0.0, 0.1, 1.0, 8.0]), st.integers(0, 2**16))
def test_each_coder_round_trips_and_the_smaller_is_kept(k, n, skew, seed):
    symbols = _symbols(k, n, skew, seed)
    table, payloads = code_with_each(symbols)
    coder, stream = encode_stream(symbols)
    assert np.array_equal(decode_stream(stream, coder, n), symbols)
    if len(np.unique(symbols)) < 2:  # empty or one symbol: Huffman needs two, the table says it all
        assert (coder, stream) == ("constant", table)
        return
    assert set(payloads) == set(CODERS) == {"huffman", "ans"}
    for name, payload in payloads.items():
        assert np.array_equal(decode_stream(table + payload, name, n), symbols), name
    assert len(stream) == len(table) + min(len(payload) for payload in payloads.values())


def test_huffman_wins_on_a_dyadic_stream_and_ans_on_a_skewed_one():
    assert encode_stream(np.tile(np.arange(16), 64))[0] == "huffman"  # exactly 4 bits a symbol, no ANS state to flush
    assert encode_stream(_symbols(2, 5000, 3.0, 0))[0] == "ans"  # ~0.2 bits a symbol; Huffman spends 1


def test_a_stream_claiming_more_symbols_than_fit_is_refused():
    coder, stream = encode_stream(np.arange(10) % 3)
    with pytest.raises(ValueError, match="at most 9"):
        decode_stream(stream, coder, 9)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1200), st.integers(0, 5)), max_size=30), st.integers(0, 600))
def test_relative_indices_round_trip_through_long_runs_of_zeros(runs, trailing_zeros):
    """Runs of (zeros, non-zeros): gaps of 0, of exactly 255, and far past it, plus zeros at the end."""
    mask = np.concatenate([np.r_[np.zeros(z, bool), np.ones(nz, bool)] for z, nz in runs] + [np.zeros(trailing_zeros, bool)])
    positions = np.flatnonzero(mask)
    symbols = gap_symbols(positions)
    assert symbols.max(initial=0) <= GAP_FILLER
    assert np.array_equal(gap_positions(symbols, len(mask)), positions)


def test_relative_indices_past_the_tensor_are_refused():
    with pytest.raises(ValueError, match="run past"):
        gap_positions(gap_symbols(np.array([3, 300])), 300)


# --- tensor codings ----------------------------------------------------------------------------


@st.composite
def float32_tensors(draw) -> np.ndarray:
    """Empty, one value, all zeros, skewed, k distinct bit patterns for k in 1..300, and sparse."""
    k, n, seed = draw(st.integers(1, 300)), draw(st.sampled_from([0, 1, 7, 1000, 4000])), draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    patterns = np.unique(np.r_[rng.integers(0, 2**32, k, dtype=np.uint64), SPECIAL[: draw(st.integers(0, 4))]].astype(np.uint32))
    words = patterns[_symbols(len(patterns), n, draw(st.sampled_from([0.0, 0.5, 8.0])), seed)]
    words[rng.random(n) < draw(st.sampled_from([0.0, 0.5, 0.99, 1.0]))] = 0
    return words.astype("<u4")


@settings(max_examples=80, deadline=None)
@given(float32_tensors())
def test_every_tensor_coding_round_trips_bit_for_bit(words):
    raw = words.tobytes()
    fields, data = encode_tensor(raw)
    assert decode_tensor(fields, data, len(raw)) == raw
    assert len(data) == fields["bytes"] <= len(raw)
    assert fields["nonzero"] == np.count_nonzero(words) and fields["distinct"] == len(np.unique(words))
    if len(np.unique(words[words != 0])) > 256:
        assert fields["coding"] != "shared"


def test_a_pruned_4_bit_tensor_codes_to_about_3_bits_a_weight():
    """Half the entries zero (1 bit each to say which) and 4 bits for each non-zero: 3 bits a weight."""
    raw = _shared_weights(100_000, 4, 0.5).tobytes()
    fields, data = encode_tensor(raw)
    assert fields["coding"] == "shared" and fields["codebook"] == 16 and "gaps" in fields
    assert len(data) < 100_000 * 3.05 / 8


def test_a_dense_tensor_skips_positions():
    fields, _ = encode_tensor(_shared_weights(10_000, 3, 0.0).tobytes())
    assert fields["coding"] == "shared" and "gaps" not in fields


# --- containers --------------------------------------------------------------------------------


def test_decode_rebuilds_model_onnx_bit_for_bit():
    assert decode(CONTAINER, _sha(MODEL)) == MODEL
    assert CONTAINER.startswith(MAGIC) and len(CONTAINER) < len(MODEL) / 2


def test_inspect_lists_the_coded_float32_tensors():
    rows = {row["name"]: row for row in inspect(CONTAINER)}
    assert set(rows) == {"shared", "dense", "special"}  # int8 and tiny tensors stay in the skeleton
    shared = rows["shared"]
    assert shared["shape"] == [100, 200] and shared["elements"] == 20_000 and shared["bits"] == 4 and shared["distinct"] == 17
    assert shared["coding"].startswith("shared gaps:") and 0.45 < shared["sparsity"] < 0.55 and shared["coded_bytes"] < 20_000 * 3.2 / 8
    assert rows["dense"]["coding"] in ("planes", "raw") and rows["dense"]["bits"] is None


def test_decode_refuses_a_container_of_another_model():
    with pytest.raises(ContainerError, match="not the expected"):
        decode(CONTAINER, "0" * 64)
    with pytest.raises(ContainerError, match="64 lowercase hex"):
        decode(CONTAINER, _sha(MODEL).upper())


def test_a_flipped_byte_is_refused_by_the_checksum():
    for pos in range(len(MAGIC) + 2, len(CONTAINER), 97):
        corrupt = bytearray(CONTAINER)
        corrupt[pos] ^= 0x40
        with pytest.raises(ContainerError, match="checksum"):
            decode(bytes(corrupt), _sha(MODEL))


def test_a_flipped_byte_behind_a_valid_checksum_never_yields_wrong_bytes():
    """Corruption the checksum misses (or a forged container) still ends in the per-tensor and final hashes."""
    for pos in range(len(MAGIC) + 6, len(CONTAINER) - 32, 13):
        corrupt = bytearray(CONTAINER)
        corrupt[pos] ^= 0x01
        try:
            assert decode(_with_checksum(bytes(corrupt)), _sha(MODEL)) == MODEL
        except ContainerError:
            pass


def test_magic_and_version_are_checked():
    with pytest.raises(ContainerError, match="magic"):
        decode(MODEL, _sha(MODEL))
    future = CONTAINER[: len(MAGIC)] + struct.pack("<H", 2) + CONTAINER[len(MAGIC) + 2 :]
    with pytest.raises(ContainerError, match="format version 2"):
        decode(_with_checksum(future), _sha(MODEL))


def test_encode_refuses_bytes_that_are_not_onnx():
    with pytest.raises(ContainerError, match="not an ONNX model"):
        encode(b"\xff" * 100)


# --- deltas ------------------------------------------------------------------------------------


BASE_TENSORS = {f"conv{i}": _shared_weights(20_000, 4, 0.5, seed=i) for i in range(6)}
BASE = _model(BASE_TENSORS)
NEW = _model({**BASE_TENSORS, "conv3": _shared_weights(20_000, 4, 0.5, seed=99)})


def test_a_delta_with_one_changed_tensor_rebuilds_the_new_model_and_is_small():
    delta = encode_delta(BASE, NEW)
    assert apply_delta(BASE, delta, _sha(NEW)) == NEW
    assert len(delta) < len(encode(NEW)) / 4  # one tensor of six, plus a skeleton patch
    assert {row["name"]: row["coding"].split()[0] for row in inspect(delta)} == {**{name: "base" for name in BASE_TENSORS}, "conv3": "shared"}


def test_a_delta_is_smaller_than_generic_binary_patches():
    delta = encode_delta(BASE, NEW)
    assert len(delta) < bsdiff_size(BASE, NEW) and len(delta) < zstd_patch_size(BASE, NEW)
    assert zstd_patch_size(NEW, NEW) < 100


def test_a_delta_for_another_base_is_refused():
    with pytest.raises(ContainerError, match="delta was made for base"):
        apply_delta(NEW, encode_delta(BASE, NEW), _sha(NEW))


def test_a_corrupted_delta_is_refused():
    delta = bytearray(encode_delta(BASE, NEW))
    delta[len(delta) // 2] ^= 0xFF
    with pytest.raises(ContainerError, match="checksum"):
        apply_delta(BASE, bytes(delta), _sha(NEW))


def test_a_delta_to_another_model_is_refused():
    with pytest.raises(ContainerError, match="not the expected"):
        apply_delta(BASE, encode_delta(BASE, NEW), _sha(BASE))


def test_decode_and_apply_delta_refuse_each_others_input():
    with pytest.raises(ContainerError, match="use apply_delta"):
        decode(encode_delta(BASE, NEW), _sha(NEW))
    with pytest.raises(ContainerError, match="use decode"):
        apply_delta(BASE, encode(NEW), _sha(NEW))


def test_the_device_side_imports_no_onnx_torch_or_pandas():
    code = "import sys, skyedge.release.container; print([m for m in ('onnx', 'torch', 'pandas', 'bsdiff4') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
