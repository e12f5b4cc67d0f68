"""The ``"onednn"`` form: oneDNN's LSTM and linear-before-reset GRU primitives through jax.ffi
(``lstm_jax.kernels.onednn_rnn``).

A C++ extension holds the backward pass, so each test holds it against JAX's own
differentiation of the generic scan (``impl="scan"``, itself checked against NumPy references
and PyTorch elsewhere): outputs, final carries and gradients with respect to the parameters,
the inputs and the initial carry, float32, across batch shapes and layouts. The extension is
built by ``make install`` (and so in CI); where it is not built these tests skip, saying why,
and the fallback tests at the end still run.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.kernels import native_rnn, onednn_rnn

F32 = jnp.float32
I, T, H = 3, 6, 5
CELLS = {"lstm": lambda: lj.lstm(H, forget_bias=0.5), "gru": lambda: lj.gru(H)}
TARGET = "lstm_jax_onednn"  # the FFI targets' common prefix, as it appears in a jaxpr

needs_extension = pytest.mark.skipif(onednn_rnn.unavailable() is not None,
                                     reason=f"oneDNN form unavailable: {onednn_rnn.unavailable()}")


def problem(name, batch=(4,), seed=0):
    cell = CELLS[name]()
    return (cell, *helpers.float32_problem(cell, batch, I, T, seed))


value_and_grads = helpers.value_and_grads


def uses_onednn(fn, *args) -> bool:
    return TARGET in str(jax.make_jaxpr(fn)(*args))


@needs_extension
@pytest.mark.parametrize("batch", [(4,), (2, 3), (1,)], ids=["B4", "B2x3", "B1"])
@pytest.mark.parametrize("options", [dict(), dict(reverse=True), dict(time_major=True)],
                         ids=["plain", "reverse", "time_major"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_onednn_equals_scan_with_gradients(name, options, batch):
    cell, params, xs, carry = problem(name, batch)
    if options.get("time_major"):
        xs = jnp.moveaxis(xs, len(batch), 0)
    got = value_and_grads(cell, params, xs, carry, "onednn", **options)
    want = value_and_grads(cell, params, xs, carry, "scan", **options)
    helpers.assert_trees_close(got, want, rtol=2e-5, atol=2e-5)


BIG = {"lstm": lj.lstm, "gru": lj.gru}  # at the sizes impl="auto" gives to oneDNN


def big_problem(name, batch=onednn_rnn.AUTO_MIN_BATCH, hidden=onednn_rnn.AUTO_MIN_HIDDEN):
    cell = BIG[name](hidden)
    params = cell.init(jax.random.key(0), I)
    return cell, params, jnp.ones((batch, T, I), F32)


@needs_extension
def test_auto_takes_onednn_for_the_gru_only_when_asked():
    cell, params, xs = big_problem("gru")
    assert not uses_onednn(lambda p, x: lj.unroll(cell, p, x)[0], params, xs)
    assert uses_onednn(lambda p, x: lj.unroll(cell, p, x, impl="onednn")[0], params, xs)


@needs_extension
def test_auto_takes_onednn_for_the_lstm_in_float32_on_the_cpu_from_the_measured_sizes(monkeypatch):
    """Where the native form cannot run (it comes first; tests/test_native.py)."""
    monkeypatch.setattr(native_rnn, "unavailable", lambda: "not built (test)")
    name = "lstm"
    cell, params, xs = big_problem(name)
    assert uses_onednn(lambda p, x: lj.unroll(cell, p, x)[0], params, xs)
    # and through a stack of layers, under the gradient
    stack = lj.stack([lj.layer(cell), lj.layer(cell)])
    sp = stack.init(jax.random.key(1), I)
    assert uses_onednn(jax.grad(lambda p, x: jnp.sum(stack.apply(p, x)[0])), sp, xs)
    # below the thresholds the fused form is as fast: auto keeps it
    for small in (big_problem(name, batch=onednn_rnn.AUTO_MIN_BATCH - 1),
                  big_problem(name, hidden=onednn_rnn.AUTO_MIN_HIDDEN // 2)):
        cell, params, xs = small
        assert not uses_onednn(lambda p, x: lj.unroll(cell, p, x)[0], params, xs)
        assert uses_onednn(lambda p, x: lj.unroll(cell, p, x, impl="onednn")[0], params, xs)


@needs_extension
@pytest.mark.parametrize("name", sorted(CELLS))
def test_auto_falls_back_to_fused_where_onednn_cannot_serve(name):
    cell, params, xs = big_problem(name)
    helpers.assert_auto_falls_back_to_fused(cell, params, xs, "onednn", TARGET)


@needs_extension
def test_the_loaded_library_reports_its_onednn_version():
    assert re.fullmatch(r"3\.\d+\.\d+", onednn_rnn.version())


@needs_extension
def test_under_vmap_and_a_reused_vjp():
    cell, params, xs, _ = problem("lstm")
    helpers.assert_vmap_and_reused_vjp(cell, params, xs, "onednn")


@needs_extension
def test_torch_parity_through_onednn():
    """PyTorch's nn.LSTM / nn.GRU on the same weights, our side through the oneDNN form."""
    torch = pytest.importorskip("torch")
    from lstm_jax.interop.torch import to_torch

    for name in sorted(CELLS):
        cell, params, xs, carry = problem(name)
        stack = lj.stack([lj.layer(cell)])
        module = to_torch(stack, (params,))
        with torch.no_grad():
            want = module(torch.from_numpy(np.array(xs)))[0].numpy()
        got = lj.unroll(cell, params, xs, impl="onednn")[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_without_the_extension_auto_uses_fused_and_onednn_says_why(monkeypatch):
    why = "the oneDNN extension is not built (test)"
    monkeypatch.setattr(onednn_rnn, "unavailable", lambda: why)
    cell, params, xs = big_problem("lstm")
    text = str(jax.make_jaxpr(lambda p, x: lj.unroll(cell, p, x)[0])(params, xs))
    assert TARGET not in text and "custom_vjp_call" in text
    with pytest.raises(ValueError, match=re.escape(f"`impl='onednn'` cannot be used here: {why}")):
        lj.unroll(cell, params, xs, impl="onednn")


def test_build_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(onednn_rnn, "_onednn_prefix", lambda: tmp_path)
    with pytest.raises(RuntimeError, match="oneDNN not found under"):
        onednn_rnn.build(tmp_path / "lib.so")
    assert onednn_rnn.main(["--optional"]) == 0  # the set-up's form: says why, does not fail
