"""Speed benchmark: ``lstm_jax.unroll`` (LSTM, GRU) against Flax, Equinox, PyTorch and cuDNN.

Every implementation computes the same function on the same weights: ours are converted to
each peer's layout, and once per (cell, size, dtype) the peers' outputs are compared with ours
(max |difference| <= ``--tol`` in float32; matmuls at full precision for the check). Then
each is timed, forward and forward+backward (the gradient of ``sum(outputs)`` with respect to
the parameters and the inputs), after compile and warm-up, as the median of ``--repeats`` runs
with ``block_until_ready`` / ``torch.cuda.synchronize``. One process, one run: the table's
ratios compare implementations measured in the same minutes on the same machine: their timed
runs are interleaved, in rounds of one untimed and up to five timed calls of each
implementation (:func:`time_interleaved`).

Implementations (those that cannot run here are skipped with the reason printed):

- ``lstm_jax``: ``unroll(lstm(H) | gru(H), params, xs, unroll=u)`` with the default
  ``impl="auto"`` (the LSTM on the CPU with the extension built: the native C++ loop;
  elsewhere the fused path with the hand-written backward), at ``--unroll`` (the reference
  for the ratios) and at every factor of ``--unrolls``; plus one row per further ``--impls``
  entry at ``--unroll``: ``scan`` (the generic scan, differentiated by JAX: what the fused
  path is measured against) or one of the cell's forms by name (``cell.forms``: ``onednn``
  and ``fused`` for both, ``native`` and ``pallas`` for the LSTM, the Pallas kernels in
  interpret mode off the GPU, so only meaningful on a GPU); a cell without that form, or
  whose form refuses the call, skips the row;
- ``flax``: ``nn.RNN(nn.OptimizedLSTMCell(H) | nn.GRUCell(H), unroll=--unroll)``;
- ``equinox``: ``eqx.nn.LSTMCell | GRUCell`` in ``jax.lax.scan(unroll=--unroll)``, vmapped
  over the batch (Equinox's documented pattern);
- ``torch``: ``torch.nn.LSTM | GRU`` on the CPU (built by ``lstm_jax.interop.torch.to_torch``),
  default thread count; only when JAX runs on the CPU;
- ``torch-cudnn``: the same module on a CUDA GPU (cuDNN); ``jax-cudnn``:
  ``jax.experimental.rnn.lstm`` (cuDNN; LSTM only). GPU only.

FLOPs: the matmuls of a forward pass, ``2·B·T·(I+H)·G·H`` with ``G = 4`` gate blocks for the
LSTM and 3 for the GRU; forward+backward counts 3x that (each matmul's backward is two matmuls
of its size). The floor printed under the table is the time those FLOPs take as one dense
``[B·T, I+H] x [I+H, G·H]`` matmul on this device: no recurrence can beat it.

    JAX_PLATFORMS=cpu python experiments/benchmark.py     # CPU anchors (32,128,256), (8,500,128)
    python experiments/benchmark.py                       # on a GPU: GPU anchors, float32 and bfloat16
    python experiments/benchmark.py --sizes 16x64x128 --cells lstm --unrolls 1,2,4,8,16 --repeats 30

Writes the JSON (``--out``) and, when matplotlib is installed, a plot of forward+backward time
per implementation and size next to it (``--plot``).

Reads top to bottom: arguments, builders (one per implementation), the weight check, the
timing helper, then main (sweep, table, JSON).
"""

from __future__ import annotations

import os

# JAX and PyTorch may share one GPU in this process (GUIDE section 5).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import lstm_jax as lj  # noqa: E402
from lstm_jax.train import write_json  # noqa: E402

# Anchor sizes (B, T, H = I) from GUIDE section 5.
CPU_SIZES = "32x128x256,8x500x128"
GPU_SIZES = "64x512x512,16x1000x256,256x128x1024,8x2000x128,128x256x2048"
CELLS = {"lstm": (lj.lstm, 4), "gru": (lj.gru, 3)}  # constructor, gate blocks G
# --impls: the generic scan, or any of the benchmarked cells' forms by name.
IMPLS = sorted({"scan"} | {form for make, _ in CELLS.values() for form in make(1).forms})
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OURS = "lstm_jax"


def parse_args(argv=None):
    on_gpu = jax.default_backend() == "gpu"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None,
                   help="comma-separated BxTxH (I = H); default: the GUIDE's anchors for this device "
                        f"(CPU {CPU_SIZES}; GPU {GPU_SIZES})")
    p.add_argument("--cells", default="lstm,gru", help=f"comma-separated, from {sorted(CELLS)}")
    p.add_argument("--dtypes", default=None,
                   help="comma-separated, from float32,bfloat16 (default float32 on CPU, both on GPU)")
    p.add_argument("--unroll", type=int, default=None,
                   help="lax.scan unroll factor for ours (the ratios' reference) and for Flax and Equinox "
                        "(default: lstm_jax.default_unroll(), ours with unroll='auto': 8 on GPU, 1 elsewhere)")
    p.add_argument("--unrolls", default=None,
                   help="comma-separated further unroll factors to time ours at ('' for none; default 1,4 "
                        "on GPU, none on CPU, where impl='auto' is a C++ loop, which has no unroll)")
    p.add_argument("--impls", default=None,
                   help=f"comma-separated further implementations of ours: scan (the generic scan) or a "
                        f"form of the cell, from {','.join(IMPLS)} (default native,fused,onednn,scan on CPU; scan,pallas on GPU)")
    p.add_argument("--plot", default=None, help="PNG path (default: --out with .png; '' for none)")
    p.add_argument("--peers", default="flax,equinox,torch,torch-cudnn,jax-cudnn",
                   help="comma-separated peers to run (default all; those that cannot run are skipped)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads for the CPU PyTorch peer (default: leave torch's default)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per entry; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs after the first (compiling) call")
    p.add_argument("--tol", type=float, default=1e-4, help="max |output difference| allowed vs ours, float32")
    p.add_argument("--tol-bf16", type=float, default=5e-2, help="the same for bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no new (cell, dtype, size) group after this long (the groups run in "
                        "the order dtypes x cells x sizes; the JSON is rewritten after each group)")
    p.add_argument("--out", default="results/benchmark.json", help="JSON output path")
    args = p.parse_args(argv)

    args.sizes = args.sizes or (GPU_SIZES if on_gpu else CPU_SIZES)
    try:
        args.sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes must be comma-separated BxTxH, got {args.sizes!r}")
    if any(len(s) != 3 or min(s) <= 0 for s in args.sizes):
        p.error(f"--sizes must be comma-separated BxTxH of positive integers, got {args.sizes}")
    args.cells = args.cells.split(",")
    args.dtypes = (args.dtypes or ("float32,bfloat16" if on_gpu else "float32")).split(",")
    args.peers = [n for n in args.peers.split(",") if n]
    args.impls = [n for n in (args.impls if args.impls is not None else
                              ("scan,pallas" if on_gpu else "native,fused,onednn,scan")).split(",") if n]
    unknown = [n for n in args.impls if n not in IMPLS]
    if unknown:
        p.error(f"--impls: unknown {unknown}; choose from {IMPLS}")
    if args.plot is None:
        args.plot = str(pathlib.Path(args.out).with_suffix(".png"))
    for flag, names, known in (("--cells", args.cells, CELLS), ("--dtypes", args.dtypes, DTYPES),
                               ("--peers", args.peers, PEERS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"{flag}: unknown {unknown}; choose from {sorted(known)}")
    try:
        if args.unrolls is None:
            args.unrolls = "1,4" if on_gpu else ""
        extra = [int(u) for u in args.unrolls.split(",") if u.strip()]
    except ValueError:
        p.error(f"--unrolls must be comma-separated integers, got {args.unrolls!r}")
    if args.unroll is None:
        args.unroll = lj.default_unroll()
    args.unrolls = list(dict.fromkeys([args.unroll] + extra))  # the reference first, no duplicates
    if min(args.unrolls) < 1:
        p.error(f"unroll factors must be >= 1, got {args.unrolls}")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


# --- builders ----------------------------------------------------------------------------
# Each takes a Problem (our cell, params and inputs) and returns an Impl whose `fwd` and
# `fwd_bwd` run one blocking call, and whose `outputs` gives the [B, T, H] outputs as float32
# NumPy, computed with full-precision matmuls, for the check. A builder that cannot run here
# raises Skip with the reason.


class Skip(Exception):
    """This implementation cannot run here; the message says why."""


@dataclasses.dataclass
class Problem:
    cell_name: str
    cell: Any
    gates: int  # G, gate blocks per step
    params: Any  # our params (LSTMParams / GRUParams)
    xs: jax.Array  # [B, T, I]
    dtype: str
    unroll: int  # for the scan-based peers
    on_gpu: bool

    @property
    def shape(self):  # (B, T, I, H)
        B, T, I = self.xs.shape
        return B, T, I, self.cell.hidden_size


@dataclasses.dataclass
class Impl:
    name: str
    fwd: Callable[[], Any]
    fwd_bwd: Callable[[], Any]
    outputs: Callable[[], np.ndarray]
    note: str = ""


def jax_impl(name: str, apply: Callable, weights: Any, xs: jax.Array, note: str = "") -> Impl:
    """An Impl from a pure ``apply(weights, xs) -> ys [B, T, H]``: jitted forward, and the jitted
    gradient of ``sum(ys)`` with respect to (weights, xs)."""
    fwd = jax.jit(apply)
    fwd_bwd = jax.jit(jax.grad(lambda w, x: jnp.sum(apply(w, x)), argnums=(0, 1)))

    def outputs():
        with jax.default_matmul_precision("highest"):  # a fresh trace: no TF32 on GPU for the check
            return np.asarray(jax.jit(apply)(weights, xs), np.float32)

    return Impl(name, lambda: jax.block_until_ready(fwd(weights, xs)),
                lambda: jax.block_until_ready(fwd_bwd(weights, xs)), outputs, note)


def build_ours(p: Problem, unroll: int, impl: str = "auto") -> Impl:
    if impl not in ("auto", "scan") and impl not in p.cell.forms:
        raise Skip(f"{p.cell!r} has no form {impl!r} (its forms: {', '.join(p.cell.forms) or 'none'})")

    def apply(params, xs):
        return lj.unroll(p.cell, params, xs, unroll=unroll, impl=impl)[0]

    name = OURS + ("" if impl == "auto" else f" {impl}") + ("" if unroll == p.unroll else f" unroll={unroll}")
    return jax_impl(name, apply, p.params, p.xs, note=f"impl={impl}, unroll={unroll}")


def _blocks(w, n):
    return jnp.split(w, n, axis=-1)


# Flax checks each given parameter against its initialiser's shape (traced in param_dtype), and its
# orthogonal initialiser's QR takes no bfloat16 (the first GPU run's bfloat16 rows failed so):
# initialisers are traced in float32, our arrays (in the benchmark's dtype) are used as given.
PARAM_DTYPE = jnp.float32


def build_flax(p: Problem) -> Impl:
    try:
        from flax import linen as nn
    except ImportError as e:
        raise Skip(f"flax not installed ({e})")
    B, T, I, H = p.shape
    dtype = DTYPES[p.dtype]
    w = p.params
    if p.cell_name == "lstm":  # one Dense per gate, as in tests/test_flax_parity.py
        wx, wh, b = _blocks(w.w_x, 4), _blocks(w.w_h, 4), _blocks(w.b, 4)
        cell = {}
        for k, g in enumerate("ifgo"):
            cell["i" + g] = {"kernel": wx[k]}
            cell["h" + g] = {"kernel": wh[k], "bias": b[k]}
        module_cell = nn.OptimizedLSTMCell(features=H, dtype=dtype, param_dtype=PARAM_DTYPE)
    else:  # reset-after GRU: n's input bias outside r * (.), its recurrent bias inside
        wx, wh, b = _blocks(w.w_x, 3), _blocks(w.w_h, 3), _blocks(w.b, 3)
        cell = {"ir": {"kernel": wx[0], "bias": b[0]}, "iz": {"kernel": wx[1], "bias": b[1]},
                "in": {"kernel": wx[2], "bias": b[2]}, "hr": {"kernel": wh[0]}, "hz": {"kernel": wh[1]},
                "hn": {"kernel": wh[2], "bias": w.b_hn}}
        module_cell = nn.GRUCell(features=H, dtype=dtype, param_dtype=PARAM_DTYPE)
    module = nn.RNN(module_cell, unroll=p.unroll)
    variables = {"params": {"cell": cell}}
    return jax_impl("flax", module.apply, variables, p.xs,
                    note=f"nn.RNN({type(module_cell).__name__}), unroll={p.unroll}")


def build_equinox(p: Problem) -> Impl:
    try:
        import equinox as eqx
    except ImportError as e:
        raise Skip(f"equinox not installed ({e})")
    B, T, I, H = p.shape
    dtype = DTYPES[p.dtype]
    w = p.params
    key = jax.random.key(0)  # Equinox's own init is replaced by our weights below
    if p.cell_name == "lstm":
        cell = eqx.nn.LSTMCell(I, H, dtype=dtype, key=key)
        cell = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias), cell, (w.w_x.T, w.w_h.T, w.b))
        init = (jnp.zeros((H,), dtype), jnp.zeros((H,), dtype))
        output = lambda carry: carry[0]  # (h, c)
    else:  # Equinox's GRU is the reset-after form with bias_n inside r * (.), like ours
        cell = eqx.nn.GRUCell(I, H, dtype=dtype, key=key)
        cell = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias, c.bias_n), cell,
                           (w.w_x.T, w.w_h.T, w.b, w.b_hn))
        init = jnp.zeros((H,), dtype)
        output = lambda carry: carry

    def apply(cell, xs):  # xs [B, T, I]: scan one sequence, vmap over the batch
        def one(seq):
            def step(carry, x):
                carry = cell(x, carry)
                return carry, output(carry)

            return jax.lax.scan(step, init, seq, unroll=p.unroll)[1]

        return jax.vmap(one)(xs)

    return jax_impl("equinox", apply, cell, p.xs,
                    note=f"{type(cell).__name__} + lax.scan(unroll={p.unroll}) + vmap")


def _torch_module(p: Problem, device: str):
    try:
        import torch
        from lstm_jax.interop.torch import to_torch
    except ImportError as e:
        raise Skip(f"torch not installed ({e})")
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[p.dtype]
    module = to_torch(lj.stack([lj.layer(p.cell)]), (p.params,)).to(device=device, dtype=tdtype)
    xs = torch.from_numpy(np.array(p.xs, np.float32)).to(device=device, dtype=tdtype)  # np.array: a writable copy
    return torch, module, xs


def _torch_impl(name: str, p: Problem, device: str, note: str) -> Impl:
    torch, module, xs = _torch_module(p, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    params = list(module.parameters())

    def fwd():
        with torch.no_grad():
            ys = module(xs)[0]
        sync()
        return ys

    def fwd_bwd():
        x = xs.detach().requires_grad_()
        ys = module(x)[0]
        grads = torch.autograd.grad(ys.sum(), [x, *params])
        sync()
        return grads

    def outputs():
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            return fwd().float().cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    return Impl(name, fwd, fwd_bwd, outputs, note)


def build_torch(p: Problem) -> Impl:
    if p.on_gpu:
        raise Skip("JAX runs on the GPU here; the CPU PyTorch peer is for CPU runs (see torch-cudnn)")
    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch not installed ({e})")
    return _torch_impl("torch", p, "cpu", note=f"nn.{p.cell_name.upper()} CPU, {torch.get_num_threads()} threads")


def build_torch_cudnn(p: Problem) -> Impl:
    if not p.on_gpu:
        raise Skip("needs a GPU (JAX runs on the CPU here)")
    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch not installed ({e})")
    if not torch.cuda.is_available():
        raise Skip(f"this torch ({torch.__version__}) has no CUDA device")
    if not torch.backends.cudnn.is_available():
        raise Skip("torch finds no cuDNN")
    return _torch_impl("torch-cudnn", p, "cuda", note=f"nn.{p.cell_name.upper()} cuDNN "
                                                      f"{torch.backends.cudnn.version()}")


def build_jax_cudnn(p: Problem) -> Impl:
    if p.cell_name != "lstm":
        raise Skip("jax.experimental.rnn has only an LSTM")
    if not p.on_gpu:
        raise Skip("jax.experimental.rnn is cuDNN only: no CPU lowering")
    try:
        from jax.experimental import rnn
    except ImportError as e:
        raise Skip(f"jax.experimental.rnn not present ({e})")
    if getattr(rnn, "gpu_rnn", None) is None:
        raise Skip("this jaxlib has no cuDNN RNN kernels (jax.experimental.rnn.gpu_rnn is None)")
    B, T, I, H = p.shape
    w = p.params
    # cuDNN's flat layout, PyTorch's gate order (i, f, g, o): W_ih [4H, I], W_hh [4H, H], b_ih, b_hh.
    weights = jnp.concatenate([w.w_x.T.ravel(), w.w_h.T.ravel(), w.b, jnp.zeros_like(w.b)])
    h0 = jnp.zeros((1, B, H), w.w_h.dtype)
    lengths = jnp.full((B,), T, jnp.int32)

    def apply(weights, xs):
        return rnn.lstm(xs, h0, h0, weights, lengths, I, H, 1, 0.0, False)[0]

    return jax_impl("jax-cudnn", apply, weights, p.xs, note="jax.experimental.rnn.lstm")


PEERS = {"flax": build_flax, "equinox": build_equinox, "torch": build_torch,
         "torch-cudnn": build_torch_cudnn, "jax-cudnn": build_jax_cudnn}


# --- check and timing ----------------------------------------------------------------------


def check(ref: np.ndarray, impl: Impl, tol: float) -> dict:
    """Max |outputs - ours| for one peer on the same weights and inputs."""
    out = impl.outputs()
    if out.shape != ref.shape:
        return {"ok": False, "max_abs_diff": None, "error": f"shape {out.shape}, ours {ref.shape}"}
    diff = float(np.max(np.abs(out - ref)))
    return {"ok": bool(diff <= tol), "max_abs_diff": diff, "tol": tol}


def time_call(fn: Callable[[], Any], repeats: int, warmup: int) -> dict:
    """The first call (compile + run) timed alone, ``warmup`` untimed calls, then ``repeats``
    timed ones; ``fn`` blocks until its result is ready."""
    start = time.perf_counter()
    fn()
    first_s = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(1e3 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(runs), "min_ms": min(runs), "max_ms": max(runs),
            "first_call_s": first_s, "runs_ms": runs}


def time_interleaved(fns: list[Callable[[], Any]], repeats: int, warmup: int, block: int = 5) -> list[dict]:
    """:func:`time_call` for several implementations at once, in rounds: each round runs every
    implementation in turn, one untimed call and then up to ``block`` timed ones, so that a
    machine slowing down or speeding up during the sweep touches every implementation alike.
    The untimed call absorbs the previous implementation's wake-down: an OpenMP runtime
    (PyTorch's, oneDNN's) keeps its threads spinning for a while after a call, and on two
    cores that time is taken from whatever runs next (measured: alternating single calls made
    both PyTorch's and our oneDNN LSTM 3-4x slower at (8, 500, 128))."""
    results = []
    for fn in fns:
        start = time.perf_counter()
        fn()
        results.append({"first_call_s": time.perf_counter() - start, "runs_ms": []})
        for _ in range(warmup):
            fn()
    while len(results[0]["runs_ms"]) < repeats:
        for fn, result in zip(fns, results):
            fn()
            for _ in range(min(block, repeats - len(result["runs_ms"]))):
                start = time.perf_counter()
                fn()
                result["runs_ms"].append(1e3 * (time.perf_counter() - start))
    for result in results:
        runs = result["runs_ms"]
        result.update(median_ms=statistics.median(runs), min_ms=min(runs), max_ms=max(runs))
    return results


def matmul_floor(B, T, I, H, G, dtype, args) -> dict:
    """This device's time for the forward FLOPs as one dense [B*T, I+H] x [I+H, G*H] matmul."""
    ka, kb = jax.random.split(jax.random.key(args.seed + 1))
    a = jax.random.normal(ka, (B * T, I + H), dtype)
    b = jax.random.normal(kb, (I + H, G * H), dtype)
    f = jax.jit(jnp.matmul)
    return time_call(lambda: jax.block_until_ready(f(a, b)), args.repeats, args.warmup)


# --- main --------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_device() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{d.platform} ({d.device_kind})"


def fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def main(argv=None):
    args = parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    versions = {k: _version(k) for k in ("jax", "jaxlib", "flax", "equinox", "torch", "numpy")}
    torch_threads = None
    if versions["torch"] != "not installed":
        import torch

        if args.torch_threads is not None:
            torch.set_num_threads(args.torch_threads)
        torch_threads = torch.get_num_threads()
    load_start = os.getloadavg()
    print(f"device: {describe_device()}; versions: {versions}; torch threads: {torch_threads} "
          f"({'default' if args.torch_threads is None else '--torch-threads'})")
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}; "
          f"median of {args.repeats} runs after {args.warmup} warm-up; ratios = time / {OURS} "
          f"(unroll={args.unroll}) time", flush=True)
    if args.repeats < 20:
        print(f"note: --repeats {args.repeats} is below the protocol's 20", flush=True)

    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join([pathlib.Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        device=describe_device(), backend=jax.default_backend(), versions=versions,
        python=platform.python_version(), torch_threads=torch_threads, cpu_count=os.cpu_count(),
        load_average_start=load_start, load_average_end=None,
        jax_default_matmul_precision=jax.config.jax_default_matmul_precision,
        measure=("median ms of `repeats` calls after the first (compiling) call and `warmup` more; "
                 "fwd = outputs; fwd_bwd = grad of sum(outputs) w.r.t. params and inputs"),
        args={k: v for k, v in vars(args).items()},
    )
    rows, checks, skipped, floors = [], [], [], []
    started = time.perf_counter()
    groups = [(c, d, s) for d in args.dtypes for c in args.cells for s in args.sizes]  # in priority order
    for n_done, (cell_name, dtype, (B, T, H)) in enumerate(groups):
        if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
            left = [f"{c} {b}x{t}x{h} {d}" for c, d, (b, t, h) in groups[n_done:]]
            print(f"\n--time-budget {args.time_budget:g} s spent: not measured: {', '.join(left)}", flush=True)
            skipped.extend(dict(cell=c, B=b, T=t, I=h, H=h, dtype=d, impl="*", reason="--time-budget spent")
                           for c, d, (b, t, h) in groups[n_done:])
            break
        make, G = CELLS[cell_name]
        I = H
        cell = make(H)
        params = cell.init(jax.random.key(args.seed), I, dtype=DTYPES[dtype])
        xs = jax.random.normal(jax.random.key(args.seed + 1), (B, T, I), DTYPES[dtype])
        p = Problem(cell_name, cell, G, params, xs, dtype, args.unroll, on_gpu)
        group = dict(cell=cell_name, B=B, T=T, I=I, H=H, dtype=dtype)
        tag = f"{cell_name} B={B} T={T} H=I={H} {dtype}"
        print(f"\n{tag}", flush=True)

        impls = [build_ours(p, u) for u in args.unrolls]
        ref_out = impls[0].outputs()
        tol = args.tol if dtype == "float32" else args.tol_bf16
        status = {impls[0].name: "ref"}
        ours_extra = {f"{OURS} {n}": (lambda p, n=n: build_ours(p, p.unroll, n)) for n in args.impls}
        for name in [*ours_extra, *args.peers]:
            try:
                impl = ours_extra[name](p) if name in ours_extra else PEERS[name](p)
                result = check(ref_out, impl, tol)
            except Skip as e:
                print(f"  {name}: skipped: {e}", flush=True)
                skipped.append(dict(group, impl=name, reason=str(e)))
                continue
            except Exception as e:  # a peer that fails to build or run here
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                print(f"  {name}: skipped: failed: {reason}", flush=True)
                skipped.append(dict(group, impl=name, reason=f"failed: {reason}"))
                continue
            checks.append(dict(group, impl=name, **result))
            mark = "ok" if result["ok"] else "MISMATCH"
            status[name] = f"{fmt(result['max_abs_diff'], '.1e')} {mark}"
            print(f"  check {name} vs {OURS}: max |diff| {fmt(result['max_abs_diff'], '.2e')} "
                  f"(tol {tol:g}) {mark}", flush=True)
            impls.append(impl)

        fwd_flops = 2 * B * T * (I + H) * G * H
        timings = {mode: time_interleaved([getattr(impl, mode) for impl in impls], args.repeats, args.warmup)
                   for mode in ("fwd", "fwd_bwd")}
        ref = {mode: timings[mode][0]["median_ms"] for mode in timings}
        for k, impl in enumerate(impls):
            timing = {mode: timings[mode][k] for mode in timings}
            row = dict(group, impl=impl.name, note=impl.note, check=status.get(impl.name, "—"),
                       fwd=timing["fwd"], fwd_bwd=timing["fwd_bwd"], fwd_flops=fwd_flops)
            for mode, flops in (("fwd", fwd_flops), ("fwd_bwd", 3 * fwd_flops)):
                ms = timing[mode]["median_ms"]
                row[f"{mode}_ratio"] = ms / ref[mode]
                row[f"{mode}_gflops"] = flops / (ms * 1e-3) / 1e9
            rows.append(row)
            print(f"  {impl.name:22s} fwd {timing['fwd']['median_ms']:9.2f} ms   "
                  f"fwd+bwd {timing['fwd_bwd']['median_ms']:9.2f} ms   "
                  f"(first calls {timing['fwd']['first_call_s']:.1f} s, "
                  f"{timing['fwd_bwd']['first_call_s']:.1f} s)", flush=True)
        floor = matmul_floor(B, T, I, H, G, DTYPES[dtype], args)
        floors.append(dict(group, fwd_flops=fwd_flops, matmul_ms=floor["median_ms"],
                           matmul_gflops=fwd_flops / (floor["median_ms"] * 1e-3) / 1e9))
        write_json(args.out, dict(meta=meta, rows=rows, checks=checks, skipped=skipped, floors=floors))  # so far

    load_end = os.getloadavg()
    print(f"\nload average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}\n")
    print("| cell | B×T×H | dtype | implementation | fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd ratio "
          "| GFLOP/s fwd | GFLOP/s fwd+bwd | outputs vs ours |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    noisy = lambda t: "†" if t["median_ms"] > 2 * t["min_ms"] else ""
    for r in rows:
        print(f"| {r['cell']} | {r['B']}×{r['T']}×{r['H']} | {r['dtype']} | {r['impl']} | "
              f"{r['fwd']['median_ms']:.2f}{noisy(r['fwd'])} | {r['fwd_ratio']:.2f} | "
              f"{r['fwd_bwd']['median_ms']:.2f}{noisy(r['fwd_bwd'])} | "
              f"{r['fwd_bwd_ratio']:.2f} | {r['fwd_gflops']:.1f} | {r['fwd_bwd_gflops']:.1f} | {r['check']} |")
    print(f"\nratio = that implementation's median time / {OURS} (unroll={args.unroll})'s: > 1 means "
          f"{OURS} is faster. GFLOP/s counts the matmuls only: fwd 2·B·T·(I+H)·G·H (G = 4 LSTM, 3 GRU), "
          "fwd+bwd 3x that. † median > 2x the fastest run: the timing was disturbed (a shared machine?); "
          "every run is in the JSON.")
    print("\nbest unroll of ours (fwd / fwd+bwd), and the floor (forward FLOPs as one dense matmul):")
    for f in floors:
        sub = [r for r in rows if r["impl"].startswith(OURS) and all(r[k] == f[k] for k in ("cell", "B", "T", "H",
                                                                                              "dtype"))]
        best = {m: min(sub, key=lambda r: r[m]["median_ms"]) for m in ("fwd", "fwd_bwd")}
        print(f"- {f['cell']} {f['B']}×{f['T']}×{f['H']} {f['dtype']}: best {best['fwd']['note']} "
              f"{best['fwd']['fwd']['median_ms']:.2f} ms / {best['fwd_bwd']['note']} "
              f"{best['fwd_bwd']['fwd_bwd']['median_ms']:.2f} ms; floor {f['matmul_ms']:.2f} ms fwd "
              f"({f['matmul_gflops']:.1f} GFLOP/s), ≈{3 * f['matmul_ms']:.2f} ms fwd+bwd")
    mismatches = [c for c in checks if not c["ok"]]
    if mismatches:
        print(f"\nWARNING: outputs differ from ours beyond tolerance: "
              f"{[(c['impl'], c['cell'], c['B'], c['T'], c['H'], c['dtype']) for c in mismatches]}")

    meta["load_average_end"] = load_end
    out = write_json(args.out, dict(meta=meta, rows=rows, checks=checks, skipped=skipped, floors=floors))
    print(f"\nwrote {out}")
    if args.plot:
        plot(rows, args.plot, meta)
    return rows


def plot(rows, path, meta):
    """Forward+backward median time per implementation, one group of bars per (cell, size, dtype)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[plots]')")
        return
    groups = list(dict.fromkeys((r["cell"], r["B"], r["T"], r["H"], r["dtype"]) for r in rows))
    names = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(groups) + 4), 4.5), sharey=False)
    width = 0.8 / len(names)
    for ax, mode in zip(axes, ("fwd", "fwd_bwd")):
        for k, name in enumerate(names):
            xs, ys = [], []
            for g, key in enumerate(groups):
                match = [r for r in rows if r["impl"] == name and (r["cell"], r["B"], r["T"], r["H"], r["dtype"]) == key]
                if match:
                    xs.append(g + (k - (len(names) - 1) / 2) * width)
                    ys.append(match[0][mode]["median_ms"])
            ax.bar(xs, ys, width, label=name)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{c} {b}×{t}×{h}\n{d}" for c, b, t, h, d in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("median ms (log)")
        ax.set_title({"fwd": "forward", "fwd_bwd": "forward + backward"}[mode])
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{meta['device']}, {meta['date'][:10]} (lower is better)", fontsize=9)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
