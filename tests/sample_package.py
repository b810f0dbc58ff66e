"""A tiny, torch-free model package with the shipped model's inputs and outputs, for the device
and registry tests.

The graph (onnx.helper) averages the sensor window and the image per channel, then maps them
linearly to `sky_logits` [B, 5], `rain_prob` [B, 4] (sigmoid) and `temp_c` [B, 4]. `bias` shifts
the outputs so releases differ; `persistence` makes the rain and temperature outputs the window's
last reading exactly (a model as good as persistence, what a fleet simulation needs); `pad_bytes` adds an unused initializer to make the file bigger
(multi-chunk downloads). Needs `onnx` (the dev/train extra): never imported by the agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from skyedge.core import contract, inputs
from skyedge.core.features import N_FEATURES, RAIN_REFERENCE, RAW_FEATURES, RELATIVE_FEATURES, TEMPERATURE_REFERENCE
from skyedge.release import manifest

SENSOR_MEAN = [12.0, 1010.0, 60.0, 3.0, 0.0, 0.0, 0.1]
SENSOR_STD = [8.0, 10.0, 20.0, 2.0, 0.7, 0.7, 0.3]


def tiny_model(path: Path, image_size: int = 16, window: int = 6, bias: float = 0.0, pad_bytes: int = 0, persistence: bool = False) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n = N_FEATURES + 3 + 1

    def weights(name: str, cols: int) -> Any:
        return helper.make_tensor(name, TensorProto.FLOAT, [n, cols], rng.normal(0, 0.3, (n, cols)).astype(np.float32).ravel().tolist())

    def vector(name: str, values: list[float]) -> Any:
        return helper.make_tensor(name, TensorProto.FLOAT, [len(values)], values)

    inits = [
        weights("w_sky", 5), weights("w_rain", 4), weights("w_temp", 4),
        vector("b_sky", [bias] * 5), vector("b_rain", [bias * 0.1] * 4), vector("b_temp", [15.0 + bias] * 4),
    ]
    if pad_bytes:
        # raw_data, as torch's exporter writes weights (what the model container codes); 16 shared values
        pad = np.round(rng.normal(size=pad_bytes // 4) * 4).clip(-8, 7).astype(np.float32) / 4
        inits.append(helper.make_tensor("pad", TensorProto.FLOAT, [pad_bytes // 4], pad.tobytes(), raw=True))
    nodes = [
        helper.make_node("ReduceMean", ["sensors"], ["s"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["image"], ["i"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["i", "image_present"], ["i2"]),
        helper.make_node("Concat", ["s", "i2", "image_present"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w_sky"], ["sky_raw"]),
        helper.make_node("Add", ["sky_raw", "b_sky"], [contract.OUTPUT_SKY_LOGITS]),
    ]
    if persistence:  # the last hour's rain and temperature (reference channels) at every horizon
        pick = np.zeros((N_FEATURES, 2 * 4), np.float32)
        pick[RAIN_REFERENCE, :4] = pick[TEMPERATURE_REFERENCE, 4:] = 1.0
        inits += [
            helper.make_tensor("last_hour", TensorProto.INT64, [], [window - 1]), numpy_helper.from_array(pick, "w_persistence"),
            helper.make_tensor("halves", TensorProto.INT64, [2], [4, 4]),
        ]
        nodes += [
            helper.make_node("Gather", ["sensors", "last_hour"], ["last"], axis=1),
            helper.make_node("MatMul", ["last", "w_persistence"], ["now"]),
            helper.make_node("Split", ["now", "halves"], [contract.OUTPUT_RAIN_PROB, contract.OUTPUT_TEMP_C], axis=1),
        ]
    else:
        nodes += [
            helper.make_node("MatMul", ["x", "w_rain"], ["rain_raw"]),
            helper.make_node("Add", ["rain_raw", "b_rain"], ["rain_logit"]),
            helper.make_node("Sigmoid", ["rain_logit"], [contract.OUTPUT_RAIN_PROB]),
            helper.make_node("MatMul", ["x", "w_temp"], ["temp_raw"]),
            helper.make_node("Add", ["temp_raw", "b_temp"], [contract.OUTPUT_TEMP_C]),
        ]
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info(contract.INPUT_IMAGE, f, ["B", 3, image_size, image_size]),
        helper.make_tensor_value_info(contract.INPUT_IMAGE_PRESENT, f, ["B", 1]),
        helper.make_tensor_value_info(contract.INPUT_SENSORS, f, ["B", window, N_FEATURES]),
    ]
    outputs = [
        helper.make_tensor_value_info(contract.OUTPUT_SKY_LOGITS, f, ["B", 5]),
        helper.make_tensor_value_info(contract.OUTPUT_RAIN_PROB, f, ["B", 4]),
        helper.make_tensor_value_info(contract.OUTPUT_TEMP_C, f, ["B", 4]),
    ]
    graph = helper.make_graph(nodes, "skyedge-tiny", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_package(
    out_dir: Path,
    version: int,
    private_key: Any,
    bias: float | None = None,
    image_size: int = 16,
    window: int = 6,
    pad_bytes: int = 0,
    latency_budget_ms: float = 1000.0,
    canary_offset: float = 0.0,
    min_agent_version: str = "0.1.0",
    container: bool = False,
    persistence: bool = False,
) -> Path:
    """A signed package dir shaped like stages/package.py's; `canary_offset` != 0 makes the
    manifest's expected canary outputs wrong (a canary-mismatch release); `container` adds model.skc."""
    from skyedge.core import inference

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bias = float(version) if bias is None else bias
    model_path = out_dir / manifest.MODEL_FILE
    tiny_model(model_path, image_size, window, bias, pad_bytes, persistence)
    rng = np.random.default_rng(version)
    canary = {
        contract.INPUT_IMAGE: rng.normal(size=(2, 3, image_size, image_size)).astype(np.float32),
        contract.INPUT_IMAGE_PRESENT: np.array([[1.0], [0.0]], np.float32),
        contract.INPUT_SENSORS: rng.normal(size=(2, window, N_FEATURES)).astype(np.float32),
    }
    canary[contract.INPUT_IMAGE][1] = 0.0
    np.savez(out_dir / manifest.CANARY_FILE, **canary)
    expected = inference.predict(inference.session(model_path), canary)
    container_entry = None
    if container:
        from skyedge.release import container as skc

        (out_dir / "model.skc").write_bytes(skc.encode(model_path.read_bytes()))
        container_entry = {**manifest.file_entry(out_dir / "model.skc", out_dir), "format_version": skc.FORMAT_VERSION, "decodes_to": manifest.MODEL_FILE}
    signature = lambda names, shapes: [{"name": n, "dtype": "float32", "shape": s} for n, s in zip(names, shapes)]  # noqa: E731
    document = manifest.build_manifest(
        out_dir,
        name="skyedge-tiny",
        version=version,
        version_label=f"0.1.0+{version}",
        created_at="2024-05-01T00:00:00+00:00",
        inputs=signature(manifest.INPUT_NAMES, [[None, 3, image_size, image_size], [None, 1], [None, window, N_FEATURES]]),
        outputs=signature([contract.OUTPUT_SKY_LOGITS, contract.OUTPUT_RAIN_PROB, contract.OUTPUT_TEMP_C], [[None, 5], [None, 4], [None, 4]]),
        preprocessing={
            "image": inputs.image_spec(image_size),
            "sensors": {"features": list(RAW_FEATURES), "relative": list(RELATIVE_FEATURES), "mean": SENSOR_MEAN, "std": SENSOR_STD, "window_hours": window, "n_features": N_FEATURES},
        },
        climatology=None,
        metrics={},
        lineage={"git_commit": None, "dvc_stages": {}, "params": {}},
        canary_expected={k: (v + canary_offset).tolist() for k, v in expected.items()},
        canary_atol=1e-4,
        latency_budget_ms=latency_budget_ms,
        min_agent_version=min_agent_version,
        container=container_entry,
    )
    manifest.write_manifest(out_dir, document)
    manifest.sign_package(out_dir, private_key)
    return out_dir
