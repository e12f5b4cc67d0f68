"""The vanilla LSTM and reset-after GRU through oneDNN's RNN primitives (CPU, float32).

PyTorch's CPU ``nn.LSTM`` runs one fused oneDNN primitive per layer and direction, forward and
backward; the XLA scan of :mod:`lstm_jax.kernels.fused_rnn` runs several XLA ops per step and
was 0.78-0.83x PyTorch's speed on a 2-core CPU. This module runs the same primitives
(``lstm_forward``/``lstm_backward`` and the linear-before-reset ``lbr_gru_*``, which is our and
PyTorch's ``reset_after=True``) as XLA custom calls through :mod:`jax.ffi`:

- ``lstm_jax/kernels/onednn/rnn.cc`` holds the FFI handlers; :func:`build` compiles it against
  oneDNN's headers and library (the pip packages ``onednn-cpu-tbb`` and
  ``onednn-devel-cpu-tbb``: the ``onednn`` extra, installed by ``make``'s set-up) and JAX's
  FFI headers;
- :func:`lstm_layer` and :func:`gru_layer` are :func:`jax.custom_vjp` functions: the forward pass
  runs oneDNN's training forward and keeps its workspace (the gates and states oneDNN's
  backward reads) as the residual; without differentiation the inference forward runs.

It is the ``"onednn"`` form of ``lstm(H)`` and ``gru(H)`` (see :class:`lstm_jax.SequenceForm`),
which serve float32 calls on the CPU without ``lengths`` or ``resets`` (oneDNN has no step
masks) when the library is built. ``impl="auto"`` takes the LSTM's from batch
:data:`AUTO_MIN_BATCH` and hidden size :data:`AUTO_MIN_HIDDEN` on (measured: below them the
fused XLA form is as fast or faster); the GRU's is opt-in (``impl="onednn"``): its forward
pass is faster at those sizes, but its forward+backward measured 0.88-1.17x the fused
form's, which already beats PyTorch's GRU.
Shapes are time-major with the batch flattened: ``xs [T, B, I]``, carries ``[B, H]``.

What the measurements decided (2-core x86-64 CPU; README, Performance):

- oneDNN's **TBB** build, not its GNU OpenMP one: PyTorch ships its own ``libgomp.so.1``, and
  once torch is imported our oneDNN bound to it; two OpenMP "masters" on two cores made GNU
  OpenMP stop spinning at its barriers, and the LSTM at (B, T, H) = (8, 500, 128) took
  ~100 ms instead of ~15 ms forward, PyTorch's own as well.
- Each calling thread keeps its scratchpad, and the fresh training workspace (tens of MB per
  call) is advised onto 2 MiB pages: faulting them in 4 KiB at a time cost about a quarter
  of the forward+backward time at (8, 500, 128).
- Tried first and dropped: our own C++ loop over time calling oneDNN's ``sgemm`` per step,
  with the projection and weight gradients left to XLA. It was slower than the fused XLA form
  (96 against 73 ms forward at (32, 128, 256)): ``sgemm`` re-packs ``W_h`` at every step,
  where the RNN primitive packs it once.
- oneDNN 3.2 is the newest CPU-only build on PyPI. PyTorch 2.13 bundles oneDNN 3.12, whose
  backward pass is faster at small batches; that gap is what remains at (8, 500, 128). The
  later ``onednn`` wheels are SYCL builds: with Intel's OpenCL CPU runtime (2 GB in all)
  oneDNN 3.13 ran, but no faster overall (61.5 ms forward+backward at (8, 500, 128)).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.kernels import _extension

Array = jax.Array

SOURCE = Path(__file__).with_name("onednn") / "rnn.cc"
# The built library sits beside its source (ignored by git); LSTM_JAX_ONEDNN_LIB points elsewhere.
LIBRARY = Path(os.environ.get("LSTM_JAX_ONEDNN_LIB", SOURCE.with_name("librnn_onednn.so")))

_CELLS = {"lstm": 0, "gru": 1}
_TARGETS = {  # FFI target name -> symbol in the library
    "lstm_jax_onednn_lstm_forward": "LstmJaxLstmForward",
    "lstm_jax_onednn_lstm_forward_train": "LstmJaxLstmForwardTrain",
    "lstm_jax_onednn_lstm_backward": "LstmJaxLstmBackward",
    "lstm_jax_onednn_gru_forward": "LstmJaxGruForward",
    "lstm_jax_onednn_gru_forward_train": "LstmJaxGruForwardTrain",
    "lstm_jax_onednn_gru_backward": "LstmJaxGruBackward",
}


# --- building and loading ------------------------------------------------------------------


def _onednn_prefix() -> Path:
    """Where the oneDNN pip packages put ``include/`` and ``lib/``: the environment's data
    directory (``sys.prefix`` for a virtual environment)."""
    return Path(sysconfig.get_paths()["data"])


def build(output: Path | None = None, *, compiler: str = "g++") -> Path:
    """Compiles ``rnn.cc`` into the shared library the ``"onednn"`` form loads.

    Args:
      output: where to write it (default :data:`LIBRARY`).
      compiler: a C++17 compiler.

    Returns:
      The library's path. Raises ``RuntimeError`` naming what is missing (oneDNN's headers or
      library, the compiler) or the compiler's error.
    """
    output = Path(output or LIBRARY)
    prefix = _onednn_prefix()
    header, lib = prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp", prefix / "lib" / "libdnnl.so"
    if not header.exists() or not lib.exists():
        raise RuntimeError(f"oneDNN not found under {prefix} (want {header} and {lib}): "
                           "pip install -e '.[onednn]' (onednn-cpu-tbb, onednn-devel-cpu-tbb, intel-cmplr-lib-rt)")
    return _extension.compile_library(
        SOURCE, output, ["-O2", f"-I{prefix / 'include'}"],
        # DT_RPATH, not RUNPATH: it also finds libdnnl's own dependencies (libtbb, libimf) there
        [f"-L{prefix / 'lib'}", "-ldnnl", f"-Wl,--disable-new-dtags,-rpath,{prefix / 'lib'}"], compiler=compiler)


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded library with its FFI targets registered, or why it could not be loaded."""
    lib = _extension.load(LIBRARY, SOURCE, _TARGETS, "oneDNN extension",
                          "`make install` builds it, or `python -m lstm_jax.kernels.onednn`")
    if isinstance(lib, str):
        return lib
    lib.lstm_jax_onednn_workspace_bytes.restype = ctypes.c_int64
    lib.lstm_jax_onednn_workspace_bytes.argtypes = [ctypes.c_int64] * 5
    lib.lstm_jax_onednn_version.restype = ctypes.c_int64
    return lib


def unavailable() -> str | None:
    """Why the ``"onednn"`` form cannot run in this process (None if it can): the library is
    not built or does not load, or JAX's default backend is not the CPU."""
    return _extension.unavailable(_library(), "oneDNN")


def version() -> str | None:
    """oneDNN's version as ``"major.minor.patch"``, or None when the library is not loaded."""
    lib = _library()
    if isinstance(lib, str):
        return None
    v = lib.lstm_jax_onednn_version()
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def refusal(params, xs, carry) -> str | None:
    """Why the ``"onednn"`` form cannot serve a call with these arrays (None if it can)."""
    return _extension.float32_refusal(unavailable(), "oneDNN's RNN primitives here take", params, xs, carry)


# impl="auto" takes the oneDNN LSTM from these sizes on: below them the fused XLA form was as
# fast or faster (forward and forward+backward, T = 50-100, B in {1, 8, 32, 128}, H = I in
# {32, 64, 128, 256, 512}, interleaved on a 2-core x86-64 CPU; README, Performance).
AUTO_MIN_BATCH = 8
AUTO_MIN_HIDDEN = 128


def preferred(params, xs, carry) -> bool:
    """Whether ``impl="auto"`` should take the oneDNN LSTM for this call (it can serve it):
    batch ``>= AUTO_MIN_BATCH`` and hidden size ``>= AUTO_MIN_HIDDEN``."""
    hidden = params.w_h.shape[0]
    batch = int(np.prod(xs.shape[1:-1]))  # xs [T, ..., I], time-major
    return batch >= AUTO_MIN_BATCH and hidden >= AUTO_MIN_HIDDEN


def _workspace_bytes(cell: str, T: int, B: int, I: int, H: int) -> int:
    n = _library().lstm_jax_onednn_workspace_bytes(_CELLS[cell], T, B, I, H)
    if n < 0:
        raise ValueError(f"oneDNN refused the {cell.upper()} shape (T, B, I, H) = {(T, B, I, H)}.")
    return int(n)


def _call(target: str, outputs, *args, aliases=None):
    return _extension.call(_library(), "onednn", target, outputs, *args, aliases=aliases)


_f32 = _extension.f32


# --- LSTM ----------------------------------------------------------------------------------


@jax.custom_vjp
def lstm_layer(w_x: Array, w_h: Array, b: Array, xs: Array, h0: Array, c0: Array):
    """A vanilla LSTM layer over time, run by oneDNN.

    Args:
      w_x: ``[I, 4H]``; w_h ``[H, 4H]``; b ``[4H]`` (gate blocks i, f, g, o), float32.
      xs: ``[T, B, I]`` time-major inputs; h0, c0 ``[B, H]``.

    Returns:
      ``(ys [T, B, H], (h_last, c_last))``, as :func:`lstm_jax.kernels.fused_rnn.lstm_layer`
      without masks.
    """
    T, B, _ = xs.shape
    H = h0.shape[-1]
    ys, h, c = _call("lstm_jax_onednn_lstm_forward", (_f32((T, B, H)), _f32((B, H)), _f32((B, H))),
                     xs, h0, c0, w_x, w_h, b)
    return ys, (h, c)


def _lstm_fwd(w_x, w_h, b, xs, h0, c0):
    T, B, I = xs.shape
    H = h0.shape[-1]
    ws = jax.ShapeDtypeStruct((_workspace_bytes("lstm", T, B, I, H),), jnp.uint8)
    ys, h, c, ws = _call("lstm_jax_onednn_lstm_forward_train", (_f32((T, B, H)), _f32((B, H)), _f32((B, H)), ws),
                         xs, h0, c0, w_x, w_h, b)
    return (ys, (h, c)), (w_x, w_h, b, xs, h0, c0, ys, h, c, ws)


def _lstm_bwd(res, cotangents):
    w_x, w_h, b, xs, h0, c0, ys, h, c, ws = res
    dys, (dh, dc) = cotangents
    outs = (_f32(xs.shape), _f32(h0.shape), _f32(c0.shape), _f32(w_x.shape), _f32(w_h.shape), _f32(b.shape),
            jax.ShapeDtypeStruct(ws.shape, ws.dtype))
    dxs, dh0, dc0, dw_x, dw_h, db, _ = _call("lstm_jax_onednn_lstm_backward", outs, xs, h0, c0, w_x, w_h, b, ys, h,
                                             c, ws, dys, dh, dc, aliases={9: 6})
    return dw_x, dw_h, db, dxs, dh0, dc0


lstm_layer.defvjp(_lstm_fwd, _lstm_bwd)


# --- GRU -----------------------------------------------------------------------------------
# oneDNN orders the GRU's blocks (update, reset, candidate), ours are (reset, update, candidate):
# swapping the first two blocks maps one onto the other, both ways.


def _swap_rz(a: Array) -> Array:
    H = a.shape[-1] // 3
    return jnp.concatenate([a[..., H:2 * H], a[..., :H], a[..., 2 * H:]], axis=-1)


def _gru_args(w_x, w_h, b, b_hn):
    return _swap_rz(w_x), _swap_rz(w_h), jnp.concatenate([_swap_rz(b), b_hn])


@jax.custom_vjp
def gru_layer(w_x: Array, w_h: Array, b: Array, b_hn: Array, xs: Array, h0: Array):
    """A reset-after GRU layer over time, run by oneDNN (``lbr_gru``).

    Args:
      w_x: ``[I, 3H]``; w_h ``[H, 3H]``; b ``[3H]`` (blocks r, z, n); b_hn ``[H]``, float32.
      xs: ``[T, B, I]``; h0 ``[B, H]``.

    Returns:
      ``(ys [T, B, H], h_last [B, H])``.
    """
    T, B, _ = xs.shape
    H = h0.shape[-1]
    ys, h = _call("lstm_jax_onednn_gru_forward", (_f32((T, B, H)), _f32((B, H))), xs, h0,
                  *_gru_args(w_x, w_h, b, b_hn))
    return ys, h


def _gru_fwd(w_x, w_h, b, b_hn, xs, h0):
    T, B, I = xs.shape
    H = h0.shape[-1]
    w_x1, w_h1, bias = _gru_args(w_x, w_h, b, b_hn)
    ws = jax.ShapeDtypeStruct((_workspace_bytes("gru", T, B, I, H),), jnp.uint8)
    ys, h, ws = _call("lstm_jax_onednn_gru_forward_train", (_f32((T, B, H)), _f32((B, H)), ws), xs, h0, w_x1, w_h1,
                      bias)
    return (ys, h), (w_x1, w_h1, bias, xs, h0, ys, h, ws)


def _gru_bwd(res, cotangents):
    w_x1, w_h1, bias, xs, h0, ys, h, ws = res
    dys, dh = cotangents
    outs = (_f32(xs.shape), _f32(h0.shape), _f32(w_x1.shape), _f32(w_h1.shape), _f32(bias.shape),
            jax.ShapeDtypeStruct(ws.shape, ws.dtype))
    dxs, dh0, dw_x, dw_h, dbias, _ = _call("lstm_jax_onednn_gru_backward", outs, xs, h0, w_x1, w_h1, bias, ys, h,
                                           ws, dys, dh, aliases={7: 5})
    H = h0.shape[-1]
    return _swap_rz(dw_x), _swap_rz(dw_h), _swap_rz(dbias[:3 * H]), dbias[3 * H:], dxs, dh0


gru_layer.defvjp(_gru_fwd, _gru_bwd)


def main(argv: list[str] | None = None) -> int:
    """``python -m lstm_jax.kernels.onednn [--optional]``: builds the library. With
    ``--optional`` a failure prints why and exits 0 (the XLA forms serve instead)."""
    return _extension.build_main(build, sys.argv[1:] if argv is None else argv, "oneDNN")
