"""How an encoder's network is run: PyTorch, or an exported graph on CPU (OpenVINO or ONNX Runtime).

On a CPU the same network with the same weights runs several times faster from an exported ONNX graph
than through PyTorch eager (``benchmarks/embed.py`` prints all three side by side), so ``runtime="auto"``
picks, on CPU, for every encoder that exports at fp32, the faster of OpenVINO and ONNX Runtime on this
machine, measured once and cached (:mod:`histokd.features.runtime_pick`: the order differs between CPUs;
the same features either way), or the one of them that is installed; PyTorch on GPU and for encoders that
do not export (``handcrafted`` mixes torch with ``scipy.ndimage``). Both graph runtimes read the one cached graph.

The exported graph (opset :data:`OPSET`, dynamic batch axis) is cached as
``<cache dir>/onnx/<key>.onnx``; the key hashes the encoder's weights, its class, input size and
normalisation, the opset, the histokd, torch and onnxruntime versions and the precision, so a cached graph
is never used for other weights, another normalisation or another runtime. The cache folder is ``$HISTOKD_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/histokd``,
else ``~/.cache/histokd``. At export, PyTorch's features of a few fixed random tiles are stored beside the
graph (``<key>.probe.npz``); every time the graph is loaded its own features of those tiles are compared
with them (cosine >= :data:`MIN_COSINE` per tile: 0.9999 at fp32, 0.98 at int8). A graph that disagrees, or an encoder that cannot be exported, falls back (OpenVINO to ONNX
Runtime, either to PyTorch) with one warning, or stops with one line for an explicit ``--runtime onnx`` /
``openvino`` and for ``int8`` (which only ONNX Runtime runs). OpenVINO runs the graph in fp32
(``INFERENCE_PRECISION_HINT`` f32; its own CPU default would be bf16 on a CPU with native bf16), and keeps
its compiled form in ``<cache dir>/openvino/``. OpenVINO's bf16 is not offered: its features reached a
per-tile cosine of only 0.9972 to PyTorch's on the probe tiles, and a process that had compiled a bf16
model and then started a subprocess crashed (SIGSEGV) in the test suite.

A runner maps uint8 tiles ``[B, 3, S, S]`` at the encoder's input size to ``float32 [B, D]`` numpy
features: the ONNX graph holds the encoder's normalisation (``Encoder.transform``) as well as its network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from histokd.errors import InputError
from histokd.features.encoders import Encoder

log = logging.getLogger("histokd")

RUNTIMES = ("auto", "torch", "onnx", "openvino")
OPSET = 17
#: ONNX Runtime precision -> the lowest per-tile cosine to PyTorch fp32 features a graph must reach on the probe tiles
MIN_COSINE = {"fp32": 0.9999, "int8": 0.98}
#: the same for OpenVINO (fp32 only: see the module docstring)
OPENVINO_MIN_COSINE = {"fp32": 0.9999}
#: precision -> autocast dtype of the PyTorch runtime (None: no autocast)
TORCH_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ONNX_PRECISIONS = tuple(MIN_COSINE)
OPENVINO_PRECISIONS = tuple(OPENVINO_MIN_COSINE)
#: tiles of the int8 calibration set (H&E-like, generated, the same on every machine)
N_CALIBRATION = 128

Runner = Callable[[torch.Tensor], np.ndarray]


def cache_dir() -> Path:
    """The documented cache folder (exported graphs live in its ``onnx/``)."""
    if os.environ.get("HISTOKD_CACHE_DIR"):
        return Path(os.environ["HISTOKD_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "histokd"


def onnxruntime_version() -> str | None:
    """The installed onnxruntime version, or None when it cannot be imported."""
    try:
        import onnxruntime
    except Exception:  # noqa: BLE001 - missing, or a broken build
        return None
    return str(onnxruntime.__version__)


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None when it cannot be imported."""
    try:
        import openvino
    except Exception:  # noqa: BLE001 - missing, or a broken build
        return None
    return str(openvino.__version__)


def resolve_runtime(runtime: str, enc: Encoder, device: str, precision: str) -> str:
    """``auto`` -> on CPU for an exportable encoder at fp32 ``openvino`` (where installed: the first candidate,
    :func:`build_runner` then keeps the faster of it and ONNX Runtime) or ``onnx``; ``onnx`` for int8; else
    ``torch``.

    An explicit ``onnx`` / ``openvino`` that cannot work here (GPU device, runtime missing, encoder not
    exportable, unsupported precision) is refused with one line.
    """
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    on_cpu = device == "cpu"
    if runtime == "auto":
        if precision == "int8":  # only ONNX Runtime runs int8: refused below where it cannot
            if not on_cpu:
                raise InputError(f"--precision int8 runs through ONNX Runtime on the CPU; add --device cpu "
                                 f"(or use fp32 / bf16 / fp16 on {device})")
            runtime = "onnx"
        else:
            graph = on_cpu and enc.exportable and precision == "fp32"
            if graph and openvino_version() is not None:
                return "openvino"
            return "onnx" if graph and onnxruntime_version() is not None else "torch"
    if runtime == "openvino":
        if not on_cpu:
            raise InputError(f"--runtime openvino runs on the CPU; use --runtime torch with --device {device}")
        if not enc.exportable:
            raise InputError(f"encoder {enc.name!r} does not export to ONNX; use --runtime torch (or auto)")
        if precision not in OPENVINO_PRECISIONS:
            raise InputError(f"--precision {precision} with --runtime openvino: choose "
                             f"{', '.join(OPENVINO_PRECISIONS)} (int8 runs through --runtime onnx, bf16 through --runtime torch)")
        if openvino_version() is None:
            raise InputError("--runtime openvino: openvino is not installed; pip install openvino, or use --runtime onnx")
    if runtime == "onnx":
        if not on_cpu:
            raise InputError(f"--runtime onnx runs on the CPU; use --runtime torch with --device {device}")
        if not enc.exportable:
            raise InputError(f"encoder {enc.name!r} does not export to ONNX; use --runtime torch (or auto)")
        if precision not in ONNX_PRECISIONS:
            raise InputError(
                f"--precision {precision} is a PyTorch autocast precision; use --runtime torch, "
                f"or --precision {'/'.join(ONNX_PRECISIONS)} with --runtime onnx"
            )
        if onnxruntime_version() is None:
            raise InputError("--runtime onnx: onnxruntime is not installed; pip install onnxruntime, or use --runtime torch")
    return runtime


# --------------------------------------------------------------------------- PyTorch


def torch_runner(enc: Encoder, device: str, precision: str) -> Runner:
    """PyTorch eager (channels-last on GPU), under autocast for ``bf16`` / ``fp16``."""
    if precision not in TORCH_PRECISIONS:
        extra = " (int8 runs through ONNX Runtime: --runtime onnx or auto)" if precision in ONNX_PRECISIONS else ""
        raise InputError(f"--precision {precision!r}: choose one of {', '.join(TORCH_PRECISIONS)}{extra}")
    dt = TORCH_PRECISIONS[precision]
    cuda = device.startswith("cuda")
    if dt is torch.float16 and not cuda:
        raise InputError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    if cuda:
        enc = enc.to(memory_format=torch.channels_last)

    def run(images: torch.Tensor) -> np.ndarray:
        x = enc.transform(images.to(device, non_blocking=cuda))
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda" if cuda else "cpu", dtype=dt) if dt is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return enc(x).float().cpu().numpy()

    return run


# --------------------------------------------------------------------------- ONNX Runtime


def weights_digest(enc: Encoder) -> str:
    """sha256 over every parameter and buffer of ``enc`` (names, shapes, bytes): the graph's identity."""
    h = hashlib.sha256(type(enc).__qualname__.encode())
    for name, t in sorted(enc.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def graph_key(enc: Encoder, precision: str) -> str:
    """Cache key of ``enc``'s exported graph (see the module docstring)."""
    import histokd

    doc = {
        "weights": weights_digest(enc),
        # the graph holds the normalisation too (non-persistent buffers, so not in the weights digest) and
        # histokd's own wrapper code: a change of either must not reuse an old graph
        "mean": list(enc.mean),
        "std": list(enc.std),
        "histokd": histokd.__version__,
        "encoder_class": type(enc).__qualname__,
        "input_size": enc.input_size,
        "dim": enc.dim,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime_version(),
        "precision": precision,
        "calibration": f"he-like-v1:{N_CALIBRATION}" if precision == "int8" else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


class _Encode(torch.nn.Module):
    """uint8 tiles at the input size -> features (``transform`` then ``forward``): the graph to export."""

    def __init__(self, enc: Encoder) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.enc(self.enc.transform(images)).float()


def probe_tiles(size: int, n: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` fixed H&E-like uint8 tiles ``[n, 3, size, size]``: the inputs of the agreement checks (and,
    with another seed, the int8 calibration set).

    Pink eosin stroma, purple hematoxylin nuclei of random density and size, white gaps and pixel noise,
    with stain colours drawn per tile: not histology, but activations in the ranges H&E tiles give.
    """
    from scipy import ndimage

    rng = np.random.default_rng([seed, size, 0xCA1])
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        eosin = rng.uniform((200, 120, 170), (245, 185, 225))
        hema = rng.uniform((60, 30, 110), (140, 100, 190))
        field = ndimage.gaussian_filter(rng.normal(size=(size, size)), rng.uniform(1.5, 4.0))
        nuclei = np.clip((field - np.quantile(field, 1 - rng.uniform(0.05, 0.45))) / (field.std() + 1e-8) * 3, 0, 1)
        img = eosin * (1 - nuclei[..., None]) + hema * nuclei[..., None]
        gaps = ndimage.gaussian_filter(rng.normal(size=(size, size)), 8.0)
        img[gaps > np.quantile(gaps, 1 - rng.uniform(0.0, 0.3))] = rng.uniform(235, 250)
        out[i] = img + rng.normal(0, 6, img.shape)
    return torch.from_numpy(out.clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def export_onnx(enc: Encoder, path: Path) -> float:
    """Export ``enc`` (uint8 tiles -> features) to ``path`` and PyTorch's features of :func:`probe_tiles` to
    ``<path>.probe.npz`` (both atomically, the graph last); returns the seconds it took."""
    from histokd.workspace import atomic_path

    t0 = time.perf_counter()
    enc = enc.cpu().eval()
    x = probe_tiles(enc.input_size)
    with torch.inference_mode():
        ref = enc(enc.transform(x)).float().numpy()
    with atomic_path(_probe_path(path)) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=ref)
    with atomic_path(path) as tmp, torch.no_grad(), warnings_silenced():
        # traced first, so that TorchScript encoders (scripted submodules) export too; the wrapper is put
        # in eval mode as well, since exporting restores the top module's training flag recursively
        traced = torch.jit.trace(_Encode(enc).eval(), (x[:2],))
        torch.onnx.export(
            traced, (x[:2],), str(tmp), opset_version=OPSET, dynamo=False,
            input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
        )
    return time.perf_counter() - t0


def _probe_path(path: Path) -> Path:
    return path.with_suffix(".probe.npz")


def quantize_int8(fp32_path: Path, path: Path, size: int) -> float:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations) of the fp32 graph at
    ``fp32_path``, calibrated on :data:`N_CALIBRATION` generated H&E-like tiles; written atomically to
    ``path`` with the fp32 graph's probe features beside it. Returns the seconds it took."""
    import shutil

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from histokd.workspace import atomic_path

    t0 = time.perf_counter()
    tiles = probe_tiles(size, N_CALIBRATION, seed=1).numpy()

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": tiles[i:i + 16]} for i in range(0, len(tiles), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with atomic_path(_probe_path(path)) as tmp:
        shutil.copyfile(_probe_path(fp32_path), tmp)
    with tempfile.TemporaryDirectory(dir=path.parent) as work, warnings_silenced():
        pre = Path(work) / "pre.onnx"  # shape-inferred and optimised, as quantisation wants it
        quant_pre_process(str(fp32_path), str(pre))
        with atomic_path(path) as tmp:
            quantize_static(str(pre), str(tmp), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return time.perf_counter() - t0


@contextlib.contextmanager
def warnings_silenced():  # noqa: ANN201 - a context manager
    """The exporter's tracer warnings say nothing a user can act on."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def cached_graph(enc: Encoder, precision: str = "fp32") -> tuple[Path, float]:
    """The path of ``enc``'s exported graph at ``precision`` (``fp32`` or ``int8``) in the cache, exported (and
    quantised) on first use, and the seconds that took (0 when it was cached)."""
    path = cache_dir() / "onnx" / f"{graph_key(enc, precision)}.onnx"
    seconds = 0.0
    if not path.is_file() or not _probe_path(path).is_file():
        fp32 = path if precision == "fp32" else cache_dir() / "onnx" / f"{graph_key(enc, 'fp32')}.onnx"
        if not fp32.is_file() or not _probe_path(fp32).is_file():
            seconds += export_onnx(enc, fp32)
        if precision == "int8":
            seconds += quantize_int8(fp32, path, enc.input_size)
        log.info("exported %s to ONNX (%s) in %.1f s -> %s", enc.name, precision, seconds, path)
    return path, seconds


class _GraphRunner:
    """An encoder's forward through its cached exported graph (``path``); subclasses run it (``_run``)."""

    path: Path
    size: int
    precision: str
    export_seconds: float

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"{type(self).__name__} wants uint8 [B, 3, {self.size}, {self.size}], got {images.dtype} "
                             f"{tuple(images.shape)}")
        return np.asarray(self._run(images.detach().cpu().contiguous().numpy()), np.float32)

    def cached_agreement(self) -> float:
        """Lowest per-tile cosine between this runner and the PyTorch features stored at export."""
        with np.load(_probe_path(self.path)) as z:
            ref = z["features"]
        return min_cosine(ref, self(probe_tiles(self.size, len(ref))))


class OnnxRunner(_GraphRunner):
    """An encoder's forward through an ONNX Runtime CPU session (the graph exported once, then cached)."""

    def __init__(self, enc: Encoder, threads: int | None = None, precision: str = "fp32", spin: bool = False) -> None:
        import onnxruntime as ort

        if precision not in ONNX_PRECISIONS:
            raise InputError(f"--precision {precision!r} with --runtime onnx: choose one of {', '.join(ONNX_PRECISIONS)}")
        self.precision, self.size = precision, enc.input_size
        self.key = graph_key(enc, precision)
        self.path, self.export_seconds = cached_graph(enc, precision)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not spin:  # idle intra-op threads sleep instead of spinning, leaving the cores to the tile readers:
            # pipeline 171-175 vs 142-162 tiles/s on 2 cores, forward-only the same (benchmarks/embed.py sweep)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


class OpenVinoRunner(_GraphRunner):
    """An encoder's forward through OpenVINO's CPU plugin, compiled from the cached fp32 graph, at OpenVINO's
    ``f32`` inference precision (the same features as PyTorch). The compiled blob is cached in
    ``<cache dir>/openvino/`` by OpenVINO itself."""

    def __init__(self, enc: Encoder, threads: int | None = None, precision: str = "fp32") -> None:
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise InputError(f"--precision {precision!r} with --runtime openvino: choose one of "
                             f"{', '.join(OPENVINO_PRECISIONS)}")
        self.precision, self.size = precision, enc.input_size
        self.path, self.export_seconds = cached_graph(enc, "fp32")
        (cache_dir() / "openvino").mkdir(parents=True, exist_ok=True)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all threads on it
            "CACHE_DIR": str(cache_dir() / "openvino"),
        }
        self.compiled = core.compile_model(str(self.path), "CPU", config)
        _roomy_signal_stack()
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.request.infer({0: images})[self.output].copy()


_SIGNAL_STACK: list[object] = []  # the alternate signal stack this process installed (kept alive)


def _roomy_signal_stack(size: int = 1 << 20) -> None:
    """Give the calling thread an alternate signal stack of ``size`` bytes where a smaller one is installed.

    Compiling a model, OpenVINO installs a ~20 KB alternate signal stack on the calling thread. Every Python
    signal handler runs on it (CPython sets ``SA_ONSTACK``), and on a CPU with AVX-512 and AMX the kernel's
    signal frame alone is ~12 KB (``sysconf(_SC_MINSIGSTKSZ)``), so two signals in a row (the SIGCHLDs of two
    DataLoader workers exiting together, which torch's DataLoader handles in Python) do not fit and the
    kernel kills the process with SIGSEGV. Seen in the test suite on a 2-core Xeon with AMX; a 1 MiB stack
    fixes it. Linux only; a no-op where no alternate stack is installed or it is already large enough.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    class _Stack(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        old = _Stack()
        if libc.sigaltstack(None, ctypes.byref(old)) != 0 or old.ss_flags & 2 or old.ss_size >= size:  # 2: SS_DISABLE
            return
        buf = ctypes.create_string_buffer(size)
        new = _Stack(ctypes.cast(buf, ctypes.c_void_p), 0, size)
        if libc.sigaltstack(ctypes.byref(new), None) == 0:
            _SIGNAL_STACK.append(buf)


def min_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Lowest per-row cosine similarity of two ``[B, D]`` arrays (rows that are both ~0 count as equal)."""
    num = (ref * got).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), np.where(np.abs(ref - got).max(1) < 1e-6, 1.0, 0.0))
    return float(cos.min())


def agreement(enc: Encoder, runner: Runner, n: int = 16) -> float:
    """Lowest per-tile cosine between ``runner`` and PyTorch fp32 on ``n`` fixed random uint8 tiles."""
    imgs = probe_tiles(enc.input_size, n, seed=2)  # neither the stored probes (0) nor the calibration set (1)
    dev = next(iter(enc.buffers())).device
    with torch.inference_mode():
        ref = enc(enc.transform(imgs.to(dev))).float().cpu().numpy()
    return min_cosine(ref, runner(imgs))


def build_runner(
    enc: Encoder, runtime: str, device: str, precision: str = "fp32", threads: int | None = None
) -> tuple[Runner, str, float]:
    """``(runner, runtime actually used, export seconds)`` for ``enc``; ``runtime`` is resolved first.

    Under ``auto`` with both graph runtimes working, the faster here is kept
    (:func:`~histokd.features.runtime_pick.pick_faster`). A graph runtime that fails (export, runtime, or
    features that disagree with PyTorch's) falls back with a warning: OpenVINO to ONNX Runtime, ONNX Runtime to PyTorch. An explicit ``onnx`` / ``openvino``, ``int8``
    (which only ONNX Runtime runs) are refused with one line instead.
    """
    chosen = resolve_runtime(runtime, enc, device, precision)
    tries = [chosen]
    if chosen == "openvino" and runtime == "auto" and onnxruntime_version() is not None:
        tries.append("onnx")
    built: dict[str, _GraphRunner] = {}
    for name in tries:
        if name not in ("onnx", "openvino"):
            break
        try:
            if name == "onnx":
                runner: _GraphRunner = OnnxRunner(enc, threads=threads, precision=precision)
                least = MIN_COSINE[precision]
            else:
                runner = OpenVinoRunner(enc, threads=threads, precision=precision)
                least = OPENVINO_MIN_COSINE[precision]
            cos = runner.cached_agreement()
            if cos < least:
                raise RuntimeError(f"its {precision} features differ from PyTorch's (cosine {cos:.6f} < {least})")
            built[name] = runner
        except Exception as e:  # noqa: BLE001 - any exporter / runtime failure: another runtime still works
            label = "ONNX Runtime" if name == "onnx" else "OpenVINO"
            if runtime == name or precision == "int8":
                raise InputError(
                    f"encoder {enc.name!r}: {label} cannot run it ({type(e).__name__}: {str(e)[:160]}); "
                    f"use --runtime torch"
                ) from e
            log.warning("encoder %s: %s unavailable (%s: %s); using %s", enc.name, label, type(e).__name__,
                        str(e)[:160], "ONNX Runtime" if name != tries[-1] else "PyTorch")
    if built:
        name = next(iter(built))
        if len(built) > 1:  # auto, both work: the faster on this machine (runtime_pick)
            from histokd.features.runtime_pick import choice_key, pick_faster

            n_threads = int(threads or torch.get_num_threads())
            key = choice_key(graph_key(enc, precision), n_threads,
                             {"onnxruntime": onnxruntime_version(), "openvino": openvino_version()})
            name = pick_faster(built, enc.input_size, key, cache_dir())
        runner = built[name]
        return runner, name, max(r.export_seconds for r in built.values())
    return torch_runner(enc, device, precision), "torch", 0.0
