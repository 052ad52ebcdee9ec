"""A fitted ``SimpleImputer -> StandardScaler -> MLPClassifier`` pipeline as a TFLite model.

Written directly with the TFLite schema's object API (``ai_edge_litert.schema_py_generated``)
and ``flatbuffers``: no TensorFlow on the workstation, and the kiosk runs the result on
ai-edge-litert. An MLP is a chain of dense layers, so the graph is FULLY_CONNECTED ops with
RELU / TANH / LOGISTIC between them and a SOFTMAX at the end:

- the imputer cannot be expressed without a NaN test, so its fill values travel in the manifest
  (``preprocessing.fill``) and the device applies them before the interpreter runs;
- the scaler becomes an ADD of ``-mean`` (a graph op) and the first layer's ``W' = W / scale``.
  Folding the mean into the bias too (``b' = b - (mean / scale) @ W``) would be one op fewer, but
  then each output is a sum of large terms that nearly cancel, and float32 loses the difference
  (2e-5 on the seed's step model, over export's 1e-5 check); centring first keeps every term
  small (8e-7 there);
- a binary classifier has one logistic output unit ``z``; the graph emits ``[0, z]`` and a
  softmax, which is exactly ``[1 - sigmoid(z), sigmoid(z)]`` in ``classes_`` order.

A (multinomial) ``LogisticRegression`` is the same graph with a single layer, so it converts too
(``export --runtime tflite``); ``export`` picks TFLite by itself only for MLPs.

Weights are folded in float64 and stored as float32; export checks the result against
scikit-learn on every held-out row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3

ACTIVATIONS: dict[str, int | None] = {
    "identity": None,
    "relu": tfl.BuiltinOperator.RELU,
    "tanh": tfl.BuiltinOperator.TANH,
    "logistic": tfl.BuiltinOperator.LOGISTIC,
}
"""MLPClassifier's hidden activations as TFLite ops (separate ops: FULLY_CONNECTED's fused
activation field only clamps, it would silently ignore TANH)."""


CONVERTIBLE = (MLPClassifier, LogisticRegression)
"""Classifiers that are chains of dense layers."""


class TFLiteConversionError(ValueError):
    """A pipeline that is not the imputer -> scaler -> dense classifier shape this converter handles."""


@dataclass(frozen=True)
class ConvertedModel:
    """The flatbuffer and the NaN fill values the device applies before running it."""

    content: bytes
    fill: tuple[float, ...]


@dataclass(frozen=True)
class _Dense:
    weights: np.ndarray  # (in, out), as scikit-learn stores them
    bias: np.ndarray
    activation: str


def is_convertible(pipeline: Any) -> bool:
    """Whether the classifier is an MLP or a logistic regression: ``export`` then uses TFLite.

    On the device a TFLite graph of these answers a row in about 0.2 ms where the scikit-learn
    pipeline takes about 1 ms (input validation in every step), and needs neither scikit-learn
    nor skops; export proves the two agree to 1e-5 on every held-out row.
    """
    steps = getattr(pipeline, "steps", None)
    return bool(steps) and isinstance(steps[-1][1], CONVERTIBLE)


def _model_steps(pipeline: Any) -> tuple[SimpleImputer, StandardScaler, Any]:
    """The pipeline's three steps, checked (``train`` saves it without samplers)."""
    steps = [step for _, step in getattr(pipeline, "steps", [])]
    kinds = (SimpleImputer, StandardScaler, CONVERTIBLE)
    if len(steps) != 3 or not all(isinstance(s, k) for s, k in zip(steps, kinds, strict=True)):
        found = " -> ".join(type(s).__name__ for s in steps) or type(pipeline).__name__
        raise TFLiteConversionError(
            f"expected SimpleImputer -> StandardScaler -> MLPClassifier or LogisticRegression, got {found}"
        )
    imputer, scaler, classifier = steps
    if imputer.add_indicator:
        raise TFLiteConversionError("SimpleImputer(add_indicator=True) is not supported")
    return imputer, scaler, classifier


def _classifier_layers(classifier: Any) -> tuple[list[_Dense], bool]:
    """The classifier's own dense layers, and whether its output is one binary logistic unit."""
    if isinstance(classifier, LogisticRegression):
        layer = _Dense(np.asarray(classifier.coef_, dtype=np.float64).T, classifier.intercept_, "identity")
        return [layer], len(classifier.classes_) == 2
    if classifier.activation not in ACTIVATIONS:
        raise TFLiteConversionError(f"MLP activation {classifier.activation!r} is not supported")
    binary = classifier.out_activation_ == "logistic"
    if classifier.out_activation_ not in ("softmax", "logistic") or (
        binary and len(classifier.classes_) != 2
    ):
        raise TFLiteConversionError("only single-label MLP classifiers are supported")
    activations = [classifier.activation] * (len(classifier.coefs_) - 1) + ["identity"]
    layers = zip(classifier.coefs_, classifier.intercepts_, activations, strict=True)
    return [
        _Dense(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64), a) for w, b, a in layers
    ], binary


def _layers(
    imputer: SimpleImputer, scaler: StandardScaler, classifier: Any
) -> tuple[np.ndarray, list[_Dense]]:
    """What the graph subtracts from every row first, and the dense layers (scaler's scale folded
    into the first one, a binary output made two-way)."""
    layers, binary = _classifier_layers(classifier)
    mean = np.zeros(scaler.n_features_in_) if scaler.mean_ is None else scaler.mean_
    scale = np.ones(scaler.n_features_in_) if scaler.scale_ is None else scaler.scale_
    kept = ~np.isnan(np.asarray(imputer.statistics_, dtype=np.float64))  # False: empty in training
    center = np.zeros(len(kept))
    center[kept] = mean  # dropped columns: nothing subtracted, and zero weight below
    weights = np.zeros((len(kept), layers[0].weights.shape[1]))
    weights[kept] = layers[0].weights / scale[:, None]
    layers[0] = _Dense(weights, layers[0].bias, layers[0].activation)
    if binary:
        layers[-1] = _two_way(layers[-1])
    return center, layers


def _two_way(layer: _Dense) -> _Dense:
    """One logistic unit ``z`` -> ``[0, z]``, whose softmax is ``[1 - sigmoid(z), sigmoid(z)]``."""
    weights = np.concatenate([np.zeros_like(layer.weights), layer.weights], axis=1)
    return _Dense(weights, np.concatenate([np.zeros_like(layer.bias), layer.bias]), layer.activation)


class _Graph:
    """Tensors, buffers and operators of one subgraph, assembled into a ModelT."""

    def __init__(self) -> None:
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [tfl.BufferT()]  # buffer 0: the empty sentinel
        self.operators: list[Any] = []
        self.opcodes: dict[int, int] = {}  # builtin operator -> index into operatorCodes

    def activation(self, name: str, width: int) -> int:
        """A float32 ``(batch, width)`` tensor computed at run time; the batch is resizable."""
        return self._tensor(name, [1, width], signature=[-1, width], buffer=0)

    def constant(self, name: str, values: np.ndarray) -> int:
        """A float32 tensor stored in its own buffer."""
        data = np.ascontiguousarray(values, dtype="<f4")
        self.buffers.append(tfl.BufferT(data=np.frombuffer(data.tobytes(), dtype=np.uint8)))
        return self._tensor(name, list(data.shape), signature=None, buffer=len(self.buffers) - 1)

    def _tensor(self, name: str, shape: list[int], signature: list[int] | None, buffer: int) -> int:
        tensor = tfl.TensorT()
        tensor.name, tensor.shape, tensor.shapeSignature = name, shape, signature
        tensor.type, tensor.buffer = tfl.TensorType.FLOAT32, buffer
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def op(
        self, builtin: int, inputs: list[int], outputs: list[int], options_type: int = 0, options: Any = None
    ):
        if builtin not in self.opcodes:
            self.opcodes[builtin] = len(self.opcodes)
        operator = tfl.OperatorT()
        operator.opcodeIndex, operator.inputs, operator.outputs = self.opcodes[builtin], inputs, outputs
        operator.builtinOptionsType, operator.builtinOptions = options_type, options
        self.operators.append(operator)

    def serialize(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        subgraph = tfl.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs, subgraph.name = inputs, outputs, "main"
        model = tfl.ModelT()
        model.version, model.description = SCHEMA_VERSION, description
        model.operatorCodes = [_opcode(b) for b in sorted(self.opcodes, key=self.opcodes.__getitem__)]
        model.subgraphs, model.buffers = [subgraph], self.buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


def _opcode(builtin: int) -> Any:
    code = tfl.OperatorCodeT()
    # builtins below 127 are also written to the deprecated int8 field, which older readers use
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    return code


def _build(center: np.ndarray, layers: list[_Dense]) -> bytes:
    graph = _Graph()
    first = graph.activation("features", len(center))
    source = graph.activation("centered", len(center))
    graph.op(
        tfl.BuiltinOperator.ADD,
        [first, graph.constant("center", -center)],
        [source],
        tfl.BuiltinOptions.AddOptions,
        tfl.AddOptionsT(),
    )
    for i, layer in enumerate(layers):
        width = layer.weights.shape[1]
        dense = graph.activation(f"dense_{i}", width)
        graph.op(
            tfl.BuiltinOperator.FULLY_CONNECTED,
            [
                source,
                graph.constant(f"dense_{i}/weights", layer.weights.T),
                graph.constant(f"dense_{i}/bias", layer.bias),
            ],
            [dense],
            tfl.BuiltinOptions.FullyConnectedOptions,
            tfl.FullyConnectedOptionsT(),
        )
        source = dense
        if ACTIVATIONS[layer.activation] is not None:
            source = graph.activation(f"{layer.activation}_{i}", width)
            graph.op(ACTIVATIONS[layer.activation], [dense], [source])
    probabilities = graph.activation("probabilities", layers[-1].weights.shape[1])
    softmax = tfl.SoftmaxOptionsT()
    softmax.beta = 1.0
    graph.op(
        tfl.BuiltinOperator.SOFTMAX, [source], [probabilities], tfl.BuiltinOptions.SoftmaxOptions, softmax
    )
    return graph.serialize([first], [probabilities], "movement-edge dense classifier")


def convert_pipeline(pipeline: Any) -> ConvertedModel:
    """Convert a fitted imputer -> scaler -> MLP (or logistic regression) pipeline.

    The model's outputs are the pipeline's ``predict_proba`` once NaN are replaced by ``fill``.
    """
    imputer, scaler, classifier = _model_steps(pipeline)
    statistics = np.asarray(imputer.statistics_, dtype=np.float64)
    fill = np.where(np.isnan(statistics), 0.0, statistics)  # dropped columns: any value, zero weight
    return ConvertedModel(
        content=_build(*_layers(imputer, scaler, classifier)), fill=tuple(float(v) for v in fill)
    )
