"""all-MiniLM-L6-v2's BERT encoder written as an ONNX graph from its verified float32 tensors (no PyTorch,
no file from anyone else's export), then its matrix products quantised to int8 by ONNX Runtime's dynamic
quantisation: what `loom.retrieval.minilm` builds once and caches."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
LAYERS, HIDDEN, HEADS, LN_EPS = 6, 384, 12, 1e-12


class _Graph:
    """ONNX nodes and initialisers being written, over the model's float32 tensors."""

    def __init__(self, weights: dict[str, npt.NDArray[np.float32]]) -> None:
        self.w = weights
        self.inits: list[Any] = []
        self.nodes: list[Any] = []

    def const(self, name: str, value: npt.ArrayLike, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [name], name=name + "_op", **attrs))
        return name

    def linear(self, x: str, prefix: str, out: str) -> str:
        wt = self.const(prefix + ".weight_t", self.w[prefix + ".weight"].T.copy())
        b = self.const(prefix + ".bias", self.w[prefix + ".bias"])
        return self.node("Add", [self.node("MatMul", [x, wt], out + "_mm"), b], out)

    def layer_norm(self, x: str, prefix: str, out: str) -> str:
        g = self.const(prefix + ".weight", self.w[prefix + ".weight"])
        b = self.const(prefix + ".bias", self.w[prefix + ".bias"])
        return self.node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=LN_EPS)

    def layer(self, i: int, x: str) -> str:
        """One encoder layer: self-attention over all the tokens, then the GELU feed-forward."""
        from onnx import helper

        p, d = f"encoder.layer.{i}.", HIDDEN // HEADS
        node, linear = self.node, self.linear
        heads_shape = self.const(f"heads_shape{i}", [0, 0, HEADS, d], np.int64)
        # Q, K and V in one product: the input is quantised once and the matrix is three times wider.
        names = [p + f"attention.self.{n}" for n in ("query", "key", "value")]
        qkv_w = self.const(f"l{i}_qkv_w", np.concatenate([self.w[n + ".weight"] for n in names], axis=0).T.copy())
        qkv_b = self.const(f"l{i}_qkv_b", np.concatenate([self.w[n + ".bias"] for n in names]))
        qkv = node("Add", [node("MatMul", [x, qkv_w], f"l{i}_qkv_mm"), qkv_b], f"l{i}_qkv")
        self.nodes.append(
            helper.make_node("Split", [qkv], [f"l{i}_q", f"l{i}_k", f"l{i}_v"], name=f"l{i}_split", axis=-1)
        )
        q, k, v = f"l{i}_q", f"l{i}_k", f"l{i}_v"
        q = node("Transpose", [node("Reshape", [q, heads_shape], f"l{i}_qr")], f"l{i}_qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, heads_shape], f"l{i}_kr")], f"l{i}_kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, heads_shape], f"l{i}_vr")], f"l{i}_vt", perm=[0, 2, 1, 3])
        scale = self.const(f"scale{i}", 1.0 / math.sqrt(d))
        scores = node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), scale], f"l{i}_scaled")
        probs = node("Softmax", [scores], f"l{i}_probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"l{i}_ctx")], f"l{i}_ctxt", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, self.const(f"hidden_shape{i}", [0, 0, HIDDEN], np.int64)], f"l{i}_ctxr")
        attn = linear(ctx, p + "attention.output.dense", f"l{i}_attn")
        x = self.layer_norm(node("Add", [x, attn], f"l{i}_res1"), p + "attention.output.LayerNorm", f"l{i}_ln1")
        up = linear(x, p + "intermediate.dense", f"l{i}_up")
        # GELU(erf) as x * 0.5 * (1 + erf(x / sqrt 2)): the form ONNX Runtime fuses (with the bias) into one kernel.
        erf = node("Erf", [node("Div", [up, self.const(f"sqrt2_{i}", math.sqrt(2.0))], f"l{i}_gs")], f"l{i}_erf")
        gelu = node("Mul", [up, node("Add", [erf, self.const(f"one{i}", 1.0)], f"l{i}_g1")], f"l{i}_gx")
        gelu = node("Mul", [gelu, self.const(f"half{i}", 0.5)], f"l{i}_gelu")
        down = linear(gelu, p + "output.dense", f"l{i}_down")
        return self.layer_norm(node("Add", [x, down], f"l{i}_res2"), p + "output.LayerNorm", f"l{i}_ln2")


def _build_graph(model_dir: Path) -> Any:
    """The BERT encoder as an ONNX model (float32), returning the last hidden state (B, L, H)."""
    import onnx
    from onnx import TensorProto, helper
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    shape = (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"])
    if shape != (LAYERS, HIDDEN, HEADS) or config["hidden_act"] != "gelu" or config["layer_norm_eps"] != LN_EPS:
        raise ValueError(f"all-MiniLM-L6-v2: unexpected config {config}")
    w = {k: v.astype(np.float32) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    g = _Graph(w)
    word = g.const("word", w["embeddings.word_embeddings.weight"])
    # Position embeddings with the (only) token type's row folded in.
    pos = g.const(
        "pos",
        w["embeddings.position_embeddings.weight"][:MAX_TOKENS] + w["embeddings.token_type_embeddings.weight"][0],
    )
    tok_emb = g.node("Gather", [word, "input_ids"], "tok_emb")
    x = g.node("Add", [tok_emb, g.node("Gather", [pos, "positions"], "pos_emb")], "emb")
    x = g.layer_norm(x, "embeddings.LayerNorm", "emb_ln")
    # No attention mask: a run is one text, unpadded (`MiniLMRuntime.encode`), so every key is a token (the
    # mask's add of zeros to each layer's (12, L, L) scores was a tenth of the model's time).
    for i in range(LAYERS):
        x = g.layer(i, x)
    g.nodes.append(helper.make_node("Identity", [x], ["hidden"], name="out"))
    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("positions", TensorProto.INT64, ["seq"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="loom")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class _QuantizerChatter(logging.Filter):
    """ONNX Runtime's quantiser logs a line per tensor on the root logger: keep them out of Loom's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.ERROR and "onnxruntime" in record.pathname)


def write_model(model_dir: Path, *, quantize: bool) -> bytes:
    """The ONNX model, serialised: the graph written from the verified weights, then (by default) quantised."""
    import onnx

    graph = _build_graph(model_dir)
    if not quantize:
        data: bytes = graph.SerializeToString()
        return data
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="loom-minilm-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(graph, str(fp32))
        chatter = _QuantizerChatter()
        logging.getLogger().addFilter(chatter)
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
        finally:
            logging.getLogger().removeFilter(chatter)
        return int8.read_bytes()
