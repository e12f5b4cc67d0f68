"""The vanilla LSTM as hand-written C++ for the CPU (float32), through :mod:`jax.ffi`.

The ``"native"`` form of ``lstm(H)``. The loops are ``lstm_jax/kernels/native/lstm.cc``.
Forward: per step the products ``x_t W_x + h_{t-1} W_h`` with both weights packed once per
call, the gates and the cell update. Backward, one call for the whole gradient: per step
``dh = dG_{t+1} W_h^T`` and the pre-activation gradients ``dG_t``; a chunk of about 256 rows
(batch x steps) at a time, while it is in cache, the weight gradients ``[x | h_prev]^T dG``,
the bias gradient and the input gradients ``dG W_x^T``. ``dG`` never leaves the kernel, so XLA
gets no ``[T, B, 4H]`` intermediate to allocate, copy or re-layout. Threads split the hidden
units, so each step needs one barrier; the library is built with ``-march=native`` for the
machine it runs on (``LSTM_JAX_NATIVE_THREADS`` caps its threads).

Why it exists (issue 17; README, Performance): the fused XLA form runs several XLA ops per
step, and XLA's per-step matmuls on a small batch ran at about half the machine's dense rate;
PyTorch's ``nn.LSTM`` runs oneDNN's fused RNN primitive, and the oneDNN 3.2 that PyPI offers
(our ``"onednn"`` form) has a slower backward pass than the 3.12 inside PyTorch. This kernel
needs no library beyond a C++ compiler and JAX's FFI headers.

:func:`lstm_layer` is a :func:`jax.custom_vjp` function; without differentiation the forward
pass writes no residuals. Shapes are time-major with the batch flattened: ``xs [T, B, I]``,
carries ``[B, H]``. It serves float32 calls on the CPU, with or without ``resets`` (packed
documents), without ``lengths``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from lstm_jax.kernels import _extension

Array = jax.Array

SOURCE = Path(__file__).with_name("native") / "lstm.cc"
# The built library sits beside its source (ignored by git); LSTM_JAX_NATIVE_LIB points elsewhere.
LIBRARY = Path(os.environ.get("LSTM_JAX_NATIVE_LIB", SOURCE.with_name("liblstm_native.so")))

_TARGETS = {  # FFI target name -> symbol in the library
    "lstm_jax_native_lstm_forward": "LstmJaxNativeLstmForward",
    "lstm_jax_native_lstm_forward_train": "LstmJaxNativeLstmForwardTrain",
    "lstm_jax_native_lstm_backward": "LstmJaxNativeLstmBackward",
}


def build(output: Path | None = None, *, compiler: str = "g++") -> Path:
    """Compiles ``lstm.cc`` into the shared library the ``"native"`` form loads.

    Args:
      output: where to write it (default :data:`LIBRARY`).
      compiler: a C++17 compiler (GCC or Clang: the kernel uses their vector extensions).

    Returns:
      The library's path. Raises ``RuntimeError`` naming a missing compiler or its error.
    """
    # -march=native: the vector width and FMA of this machine; the library is built where it runs.
    return _extension.compile_library(SOURCE, Path(output or LIBRARY), ["-O3", "-march=native"], compiler=compiler)


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded library with its FFI targets registered, or why it could not be loaded."""
    return _extension.load(LIBRARY, SOURCE, _TARGETS, "native LSTM extension",
                           "`make install` builds it, or `python -m lstm_jax.kernels.native`")


def unavailable() -> str | None:
    """Why the ``"native"`` form cannot run in this process (None if it can): the library is not
    built or does not load, or JAX's default backend is not the CPU."""
    return _extension.unavailable(_library(), "the native kernel")


def refusal(params, xs, carry) -> str | None:
    """Why the ``"native"`` form cannot serve a call with these arrays (None if it can)."""
    return _extension.float32_refusal(unavailable(), "the native kernel takes", params, xs, carry)


# impl="auto" takes the native LSTM from this hidden size on. In a sweep against the fused XLA
# form (T = 64, B in {1, 4, 8, 32, 128}, H in {32, 64, 128, 256}, interleaved, 2-core x86-64 CPU;
# README, Performance), from H = 128 on the native form was 1.04-1.83x the fused form's speed in
# forward+backward and 1.11-2.19x forward, in every cell; at H = 32 and 64 it won 7 of 10 cells
# forward+backward and 9 of 10 forward, losing (0.55-0.89x) in calls of about a millisecond,
# where its per-call and per-step costs (waking its thread, a barrier per step) weigh most.
AUTO_MIN_HIDDEN = 128


def preferred(params, xs, carry) -> bool:
    """Whether ``impl="auto"`` should take the native LSTM for this call (it can serve it):
    hidden size ``>= AUTO_MIN_HIDDEN``."""
    return params.w_h.shape[0] >= AUTO_MIN_HIDDEN


def _call(target: str, outputs, *args):
    return _extension.call(_library(), "native", target, outputs, *args)


_f32 = _extension.f32


def _resets(flags, hr, cr):
    """The kernel's reset arguments: flags [T, B] as bytes with hr, cr [B, H], or three empty arrays."""
    if flags is None:
        return jnp.zeros((0,), jnp.uint8), jnp.zeros((0,), jnp.float32), jnp.zeros((0,), jnp.float32)
    return flags.astype(jnp.uint8), hr, cr


@jax.custom_vjp
def lstm_layer(w_x: Array, w_h: Array, b: Array, xs: Array, h0: Array, c0: Array, flags: Array | None = None,
               hr: Array | None = None, cr: Array | None = None):
    """A vanilla LSTM layer over time, run by the native kernel: ``w_x [I, 4H]``, ``w_h
    [H, 4H]``, ``b [4H]`` (gate blocks i, f, g, o), inputs ``xs [T, B, I]`` (time-major) and
    carry ``h0, c0 [B, H]``, all float32; optionally resets: ``flags [T, B]`` bool, the steps that
    start from the reset carry ``hr, cr [B, H]`` instead of the previous step's. Returns ``(ys
    [T, B, H], (h_last, c_last))``, the signature and results of
    :func:`lstm_jax.kernels.fused_rnn.lstm_layer` without the ``valid`` mask. Differentiable in
    every float argument."""
    T, B, _ = xs.shape
    H = h0.shape[-1]
    ys, h, c = _call("lstm_jax_native_lstm_forward", (_f32((T, B, H)), _f32((B, H)), _f32((B, H))),
                     xs, w_x, w_h, b, h0, c0, *_resets(flags, hr, cr))
    return ys, (h, c)


def _lstm_fwd(w_x, w_h, b, xs, h0, c0, flags=None, hr=None, cr=None):
    T, B, _ = xs.shape
    H = h0.shape[-1]
    resets = _resets(flags, hr, cr)
    ys, h, c, gates, cs = _call("lstm_jax_native_lstm_forward_train",
                                (_f32((T, B, H)), _f32((B, H)), _f32((B, H)), _f32((T, B, 4 * H)),
                                 _f32((T, B, H))),
                                xs, w_x, w_h, b, h0, c0, *resets)
    return (ys, (h, c)), (w_x, w_h, xs, h0, c0, ys, gates, cs, resets)


def _lstm_bwd(res, cotangents):
    w_x, w_h, xs, h0, c0, ys, gates, cs, resets = res
    dys, (dh, dc) = cotangents
    # One call: the recurrence backwards and, chunk by chunk, the weight, bias and input gradients.
    shapes = (w_x.shape, w_h.shape, w_h.shape[-1:], xs.shape, h0.shape, c0.shape, h0.shape, c0.shape)
    dw_x, dw_h, db, dxs, dh0, dc0, dhr, dcr = _call("lstm_jax_native_lstm_backward", tuple(map(_f32, shapes)),
                                                    w_x, w_h, xs, h0, ys, gates, cs, c0, *resets, dys, dh, dc)
    if resets[0].size == 0:  # no resets: lstm_layer got flags = hr = cr = None
        return dw_x, dw_h, db, dxs, dh0, dc0, None, None, None
    return dw_x, dw_h, db, dxs, dh0, dc0, None, dhr, dcr


lstm_layer.defvjp(_lstm_fwd, _lstm_bwd)


def main(argv: list[str] | None = None) -> int:
    """``python -m lstm_jax.kernels.native [--optional]``: builds the library. With ``--optional``
    a failure prints why and exits 0 (the XLA forms serve instead)."""
    return _extension.build_main(build, sys.argv[1:] if argv is None else argv, "native")
