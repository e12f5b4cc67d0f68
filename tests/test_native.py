"""The ``"native"`` form: the LSTM's recurrence as hand-written C++ through jax.ffi
(``lstm_jax.kernels.native_rnn``).

The C++ holds the forward loop and the backward loop, so each test holds it against JAX's own
differentiation of the generic scan (``impl="scan"``, itself checked against NumPy references
and PyTorch elsewhere): outputs, final carries and gradients with respect to the parameters,
the inputs and the initial carry, float32, across batch shapes, layouts and sizes that cut the
hidden units into vector blocks with a remainder, the batch into row tiles with a remainder,
and the work across threads. The extension is built by ``make install`` (and so in CI); where
it is not built these tests skip, saying why, and the fallback tests at the end still run.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.kernels import _extension, native_rnn

TARGET = "lstm_jax_native"  # the FFI targets' common prefix, as it appears in a jaxpr

needs_extension = pytest.mark.skipif(native_rnn.unavailable() is not None,
                                     reason=f"native form unavailable: {native_rnn.unavailable()}")


def problem(batch=(4,), I=3, T=6, H=5, seed=0):
    cell = lj.lstm(H, forget_bias=0.5)
    return (cell, *helpers.float32_problem(cell, batch, I, T, seed))


def uses_native(fn, *args) -> bool:
    return TARGET in str(jax.make_jaxpr(fn)(*args))


@needs_extension
@pytest.mark.parametrize("batch", [(4,), (2, 3), (1,)], ids=["B4", "B2x3", "B1"])
@pytest.mark.parametrize("options", [dict(), dict(reverse=True), dict(time_major=True)],
                         ids=["plain", "reverse", "time_major"])
def test_native_equals_scan_with_gradients(options, batch):
    cell, params, xs, carry = problem(batch)
    if options.get("time_major"):
        xs = jnp.moveaxis(xs, len(batch), 0)
    got = helpers.value_and_grads(cell, params, xs, carry, "native", **options)
    want = helpers.value_and_grads(cell, params, xs, carry, "scan", **options)
    helpers.assert_trees_close(got, want, rtol=2e-5, atol=2e-5)


@needs_extension
@pytest.mark.parametrize("B, I, T, H", [(13, 7, 9, 21), (16, 40, 35, 40), (6, 16, 5, 16), (7, 9, 1, 8),
                                        (13, 7, 45, 21), (300, 5, 3, 8)],
                         ids=["tails", "two-threads", "whole-blocks", "one-step", "chunks", "step-chunks"])
def test_native_equals_scan_where_the_kernel_cuts_its_work(B, I, T, H):
    """H = 21: vector blocks of 8 with a remainder of 5 and an odd number of blocks (the backward
    pass takes blocks in pairs); B = 13: row tiles of at most 6 with a remainder; (16, 40):
    enough work per step for the kernel to use two threads on a machine with two cores. The
    backward pass takes its gradient products a chunk of about 256 rows (batch x steps) at a time:
    B = 13, T = 45 makes chunks of 19, 19 and 7 steps; (16, 40, 35) three chunks on two threads;
    B = 300 one step per chunk, each longer than the 256 rows the products take at a time."""
    cell, params, xs, carry = problem((B,), I, T, H, seed=1)
    got = helpers.value_and_grads(cell, params, xs, carry, "native")
    want = helpers.value_and_grads(cell, params, xs, carry, "scan")
    helpers.assert_trees_close(got, want, rtol=5e-5, atol=5e-5)


@needs_extension
def test_concurrent_calls_agree_with_one_at_a_time():
    """Calls from several Python threads at once (the kernel's thread pool serves one call at a
    time; the others run on their caller's thread alone) give the same results."""
    cell, params, xs, carry = problem((16,), 40, 7, 40)
    run = jax.jit(lambda x: lj.unroll(cell, params, x, carry, impl="native")[0])
    inputs = [xs * (1 + k / 10) for k in range(6)]
    alone = [np.asarray(run(x)) for x in inputs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: np.asarray(run(x)), inputs))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


@needs_extension
def test_auto_takes_native_for_the_vanilla_lstm_in_float32_on_the_cpu():
    cell, params, xs, _ = problem((8,), H=native_rnn.AUTO_MIN_HIDDEN)
    assert uses_native(lambda p, x: lj.unroll(cell, p, x)[0], params, xs)
    # and through a stack of layers, under the gradient
    stack = lj.stack([lj.layer(cell), lj.layer(cell)])
    sp = stack.init(jax.random.key(1), xs.shape[-1])
    assert uses_native(jax.grad(lambda p, x: jnp.sum(stack.apply(p, x)[0])), sp, xs)
    # with packed documents (resets) too, as char_lm trains
    doc_starts = jnp.zeros(xs.shape[:2], bool).at[:, 3].set(True)
    assert uses_native(jax.grad(lambda p, x: jnp.sum(stack.apply(p, x, resets=doc_starts)[0])), sp, xs)
    # not for the variants (peepholes here): they have no native form
    peephole = lj.lstm(8, peephole=True)
    pp = peephole.init(jax.random.key(2), xs.shape[-1])
    assert not uses_native(lambda p, x: lj.unroll(peephole, p, x)[0], pp, xs)


@needs_extension
def test_auto_falls_back_to_fused_where_native_cannot_serve():
    cell, params, xs, _ = problem((4,), H=native_rnn.AUTO_MIN_HIDDEN)
    helpers.assert_auto_falls_back_to_fused(cell, params, xs, "native", TARGET, refused=("lengths",))


# Resets at step 0, at consecutive steps, at the last step, and none in one row.
RESETS = np.zeros((5, 9), bool)
RESETS[0, 0] = RESETS[1, [3, 4]] = RESETS[2, 8] = RESETS[4, [2, 5, 7]] = True


@needs_extension
@pytest.mark.parametrize("options", [dict(), dict(reverse=True)], ids=["plain", "reverse"])
@pytest.mark.parametrize("B, I, H", [(5, 3, 5), (5, 40, 40)], ids=["small", "two-threads"])
def test_native_resets_equal_the_scan_with_the_reset_carrys_gradient(B, I, H, options):
    """Packed documents: flagged steps start from the reset carry (here ``reset_to``, another
    carry than the initial one, so that its gradient is its own), in the forward pass and in
    every gradient; on two threads too (B = 5 stacked three times, H = 40)."""
    batch = B if H < 40 else 3 * B
    cell, params, xs, carry = problem((batch,), I, RESETS.shape[1], H, seed=2)
    reset_to = jax.tree.map(lambda a: a[::-1] + 0.5, carry)
    resets = jnp.asarray(np.tile(RESETS, (batch // B, 1)))

    def loss(impl, p, x, c, r):
        ys, final = lj.unroll(cell, p, x, c, impl=impl, resets=resets, reset_to=r, **options)
        return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves((ys, final))), (ys, final)

    args = (params, xs, carry, reset_to)
    grad = lambda impl: jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1, 2, 3),
                                                   has_aux=True))
    helpers.assert_trees_close(grad("native")(*args), grad("scan")(*args), rtol=5e-5, atol=5e-5)
    # and the forward pass alone (inference: the kernel writes no residuals)
    run = lambda impl: jax.jit(lambda *a: lj.unroll(cell, *a[:3], impl=impl, resets=resets, reset_to=a[3],  # noqa: E731
                                                     **options))(*args)
    helpers.assert_trees_close(run("native"), run("scan"), rtol=5e-5, atol=5e-5)


@needs_extension
def test_under_vmap_and_a_reused_vjp():
    cell, params, xs, _ = problem()
    helpers.assert_vmap_and_reused_vjp(cell, params, xs, "native")


@needs_extension
def test_torch_parity_through_native():
    """PyTorch's nn.LSTM on the same weights (forward and the gradients of both sides), our side
    through the native form."""
    torch = pytest.importorskip("torch")
    from lstm_jax.interop.torch import to_torch

    cell, params, xs, _ = problem((5,), I=6, T=9, H=11)
    stack = lj.stack([lj.layer(cell)])
    module = to_torch(stack, (params,))
    x = torch.from_numpy(np.array(xs)).requires_grad_(True)
    y = module(x)[0]
    y.pow(2).sum().backward()
    got, dx = jax.value_and_grad(lambda x: jnp.sum(lj.unroll(cell, params, x, impl="native")[0] ** 2))(xs)
    np.testing.assert_allclose(got, y.pow(2).sum().item(), rtol=1e-5)
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_without_the_extension_auto_uses_another_form_and_native_says_why(monkeypatch):
    why = "the native LSTM extension is not built (test)"
    monkeypatch.setattr(native_rnn, "unavailable", lambda: why)
    cell, params, xs, _ = problem((8,), H=native_rnn.AUTO_MIN_HIDDEN)
    assert not uses_native(lambda p, x: lj.unroll(cell, p, x)[0], params, xs)
    with pytest.raises(ValueError, match=re.escape(f"`impl='native'` cannot be used here: {why}")):
        lj.unroll(cell, params, xs, impl="native")


def test_build_says_what_failed(tmp_path, monkeypatch, capsys):
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-compiler'"):
        native_rnn.build(tmp_path / "lib.so", compiler="no-such-compiler")
    monkeypatch.setattr(native_rnn, "build", lambda: (_ for _ in ()).throw(RuntimeError("no compiler (test)")))
    assert native_rnn.main(["--optional"]) == 0  # the set-up's form: says why, does not fail
    assert "the XLA forms will serve instead: no compiler (test)" in capsys.readouterr().out


def test_a_library_older_than_its_source_is_refused(tmp_path):
    source, library = tmp_path / "k.cc", tmp_path / "k.so"
    library.write_bytes(b"")
    source.write_text("// newer")
    old = source.stat().st_mtime - 10
    os.utime(library, (old, old))
    why = _extension.load(library, source, {}, "test extension", "rebuild it")
    assert why == f"the test extension {library} is older than its source k.cc (rebuild it)"
    assert _extension.load(tmp_path / "missing.so", source, {}, "test extension", "rebuild it") == (
        f"the test extension is not built ({tmp_path / 'missing.so'} is missing; rebuild it)")


FORK_SCRIPT = r"""
import ctypes, os, sys
import numpy as np
lib = ctypes.CDLL(sys.argv[1])
P = ctypes.c_void_p
lib.lstm_jax_native_forward.argtypes = [ctypes.c_int64] * 4 + [P] * 14
T, B, I, H = 5, 16, 40, 40  # enough work per step for two threads on two cores
rng = np.random.default_rng(0)
xs, w_x, w_h = (rng.standard_normal(s).astype(np.float32) for s in ((T, B, I), (I, 4 * H), (H, 4 * H)))
b, h0 = np.zeros(4 * H, np.float32), np.zeros((B, H), np.float32)
def run():
    ys, h, c = np.zeros((T, B, H), np.float32), np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    ptr = lambda a: a.ctypes.data_as(P)
    no_resets = (None, None, None)
    lib.lstm_jax_native_forward(T, B, I, H, *map(ptr, (xs, w_x, w_h, b, h0, h0)), *no_resets,
                                *map(ptr, (ys, h, c)), None, None)
    return ys
first = run()  # starts the kernel's thread pool
pid = os.fork()
if pid == 0:  # the child has none of the pool's threads: the kernel must run alone, not wait for them
    os._exit(0 if np.array_equal(run(), first) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@needs_extension
def test_a_forked_child_runs_the_kernel_without_the_parents_threads(tmp_path):
    """No JAX here (it warns against fork): the library through ctypes, called in a parent that
    has started the kernel's threads and in a child forked after that."""
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(native_rnn.LIBRARY)], timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
