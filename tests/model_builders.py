"""ONNX models built in the tests with onnx.helper, honouring docs/model-format.md.

They are pointwise (each output pixel depends only on the input pixel), so a sliding-window run
must reproduce the whole-array computation exactly: that is what the engine tests check.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from swimdiff_geo.inference.contract import ModelContract


def _save(graph: onnx.GraphProto, contract: ModelContract, path: str) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for key, value in contract.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def change_contract(bands: list[str], **overrides) -> ModelContract:
    fields = dict(
        model_type="change_detection",
        bands=list(bands),
        num_dates=2,
        tile_size=32,
        tiles_overlap=25.0,
        threshold=0.5,
        input_scale=1.0,
        class_names={"0": "no change", "1": "change"},
        name="test pointwise change",
    )
    fields.update(overrides)
    return ModelContract(**fields)


def pointwise_change_model(path: str, contract: ModelContract, gain: float, bias: float) -> str:
    """p = sigmoid(gain * mean_c((b_c - a_c)^2) + bias), input (N, 2C, H, W)."""
    c = contract.num_bands
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2 * c, "H", "W"])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1, "H", "W"])
    inits = [
        helper.make_tensor("split", TensorProto.INT64, [2], [c, c]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [gain]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [bias]),
    ]
    nodes = [
        helper.make_node("Split", ["x", "split"], ["a", "b"], axis=1),
        helper.make_node("Sub", ["b", "a"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2", "axes"], ["m"], keepdims=1),
        helper.make_node("Mul", ["m", "gain"], ["g"]),
        helper.make_node("Add", ["g", "bias"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    graph = helper.make_graph(nodes, "pointwise_change", [x], [y], inits)
    return _save(graph, contract, path)


def pointwise_change_numpy(a: np.ndarray, b: np.ndarray, gain: float, bias: float) -> np.ndarray:
    """The same computation on scaled ``(C, H, W)`` arrays: ``(H, W)`` probabilities."""
    m = np.mean((b.astype(np.float64) - a) ** 2, axis=0)
    return 1.0 / (1.0 + np.exp(-(gain * m + bias)))


def segmentation_contract(bands: list[str], classes: list[str], **overrides) -> ModelContract:
    fields = dict(
        model_type="segmentation",
        bands=list(bands),
        num_dates=1,
        tile_size=32,
        tiles_overlap=25.0,
        input_scale=1.0,
        class_names={str(i): n for i, n in enumerate(classes)},
        class_colors={
            str(i): f"#{(50 * i) % 256:02x}{(90 * i) % 256:02x}{(140 + 30 * i) % 256:02x}"
            for i in range(len(classes))
        },
        name="test pointwise segmentation",
    )
    fields.update(overrides)
    return ModelContract(**fields)


def pointwise_segmentation_model(path: str, contract: ModelContract, weights: np.ndarray) -> str:
    """Class probabilities softmax(W @ x) per pixel; ``weights`` is ``(K, C)``."""
    k, c = weights.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, "H", "W"])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", k, "H", "W"])
    w = helper.make_tensor("w", TensorProto.FLOAT, [k, c, 1, 1], weights.astype(np.float32).ravel())
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(nodes, "pointwise_segmentation", [x], [y], [w])
    return _save(graph, contract, path)


def pointwise_segmentation_numpy(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    z = np.einsum("kc,chw->khw", weights.astype(np.float64), x)
    z -= z.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


def classification_contract(bands: list[str], classes: list[str], **overrides) -> ModelContract:
    return segmentation_contract(bands, classes, model_type="classification",
                                 name="test patch classifier", **overrides)  # fmt: skip


def mean_pool_classifier_model(path: str, contract: ModelContract, weights: np.ndarray) -> str:
    """Patch classifier softmax(W @ mean_hw(x)): ``(N, C, H, W)`` -> ``(N, K)``."""
    k, c = weights.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, "H", "W"])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", k])
    w = helper.make_tensor("w", TensorProto.FLOAT, [k, c, 1, 1], weights.astype(np.float32).ravel())
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w"], ["z4"]),
        helper.make_node("Flatten", ["z4"], ["z"], axis=1),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(nodes, "mean_pool_classifier", [x], [y], [w])
    return _save(graph, contract, path)
