"""What ``"auto"`` picks on a GPU, checked on the CPU by mocking JAX's default backend.

The choices come from the H200 measurement in the README (Performance, GPU): ``unroll="auto"``
is 8 there and 1 elsewhere; ``impl="auto"`` takes the fused form (oneDNN is CPU-only, Pallas
is opt-in); the Pallas form refuses hidden sizes whose ``W_h`` would not fit a program's
shared memory, which is where Triton failed to compile it.
"""

import jax
import jax.numpy as jnp
import pytest

import lstm_jax as lj
from lstm_jax.unroll import GPU_UNROLL, _choose_form


@pytest.fixture
def on_gpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def scan_unrolls(fn, *args):
    """The ``unroll`` parameter of every scan in ``fn``'s jaxpr."""
    return [eqn.params["unroll"] for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns if eqn.primitive.name == "scan"]


def test_default_unroll_follows_the_backend(on_gpu):
    assert lj.default_unroll() == GPU_UNROLL == 8
    cell = lj.gru(4)
    params, xs = cell.init(jax.random.key(0), 3), jnp.ones((2, 5, 3), jnp.float32)
    assert scan_unrolls(lambda p, x: lj.unroll(cell, p, x, impl="scan")[0], params, xs) == [8]
    assert scan_unrolls(lambda p, x: lj.unroll(cell, p, x, impl="scan", unroll=2)[0], params, xs) == [2]
    layer = lj.layer(cell, impl="scan")  # the config keeps "auto": resolved where it runs
    assert layer.config.unroll == "auto"
    lp = layer.init(jax.random.key(0), 3)
    assert scan_unrolls(lambda p, x: layer.apply(p, x)[0], lp, xs) == [8]


def test_default_unroll_is_one_on_the_cpu():
    assert jax.default_backend() == "cpu" and lj.default_unroll() == 1
    cell = lj.gru(4)
    params, xs = cell.init(jax.random.key(0), 3), jnp.ones((2, 5, 3), jnp.float32)
    assert scan_unrolls(lambda p, x: lj.unroll(cell, p, x, impl="scan")[0], params, xs) == [1]


def test_unroll_rejects_other_strings():
    cell = lj.gru(4)
    with pytest.raises(ValueError, match="`unroll` must be a positive int, True .* or 'auto', got 'fast'"):
        lj.unroll(cell, cell.init(jax.random.key(0), 3), jnp.ones((2, 5, 3), jnp.float32), unroll="fast")
    with pytest.raises(ValueError, match="`unroll`"):
        lj.layer(cell, unroll="fast")


def _call(cell, dtype):
    """``_choose_form``'s keyword arguments for a plain call: batch 2, T = 5, I = 3."""
    params = cell.init(jax.random.key(0), 3, dtype=dtype)
    xs, carry = jnp.ones((5, 2, 3), dtype), cell.init_carry(params, (2,))
    return dict(empty=False, lengths=None, resets=None, return_carries=False, return_gates=False,
                remat_chunk=None, arrays=(params, xs, carry))


@pytest.mark.parametrize("make", [lj.lstm, lj.gru])
def test_auto_takes_the_fused_form_on_a_gpu(on_gpu, make):
    cell = make(256)
    call = _call(cell, jnp.float32)
    assert _choose_form(cell, "auto", **call)[0] == "fused"


@pytest.mark.parametrize("dtype, hidden, fits", [(jnp.float32, 64, True), (jnp.float32, 65, False),
                                                 (jnp.float32, 128, False), (jnp.bfloat16, 128, True),
                                                 (jnp.bfloat16, 129, False)])
def test_pallas_refuses_what_does_not_fit_shared_memory(on_gpu, dtype, hidden, fits):
    cell = lj.lstm(hidden)
    call = _call(cell, dtype)
    if fits:
        assert _choose_form(cell, "pallas", **call)[0] == "pallas"
    else:
        with pytest.raises(ValueError, match=r"keep W_h in shared memory: [\d,]+ bytes at hidden size "
                                             rf"{hidden} \({jnp.dtype(dtype).name}\), over the 232,448"):
            _choose_form(cell, "pallas", **call)


def test_pallas_takes_any_hidden_size_off_the_gpu():
    cell = lj.lstm(128)  # interpret mode on the CPU: no shared-memory limit
    call = _call(cell, jnp.float32)
    assert _choose_form(cell, "pallas", **call)[0] == "pallas"
