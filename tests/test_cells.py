"""Every cell against the float64 NumPy references in ``tests/reference.py``, plus invariants.

The references are written from the papers' equations with per-gate weights; the small
adapters below slice our fused parameters into them, so agreement proves both the maths and
the documented fused layout (gate order, switched-off blocks, FGR and projection layout).
Proven here, for rnn (tanh, relu), every LSTM option, the nine Greff variants, both GRU
forms and MUT1-3:

* ``unroll`` outputs, final carry and per-step activations equal the reference (float64 to
  1e-10, float32 to 1e-5), from random perturbed parameters and a random initial carry;
* ``cell.step == recur(project)`` == one reference step, for batch shapes (), (3,), (2, 3);
* finite-difference gradients (``jax.test_util.check_grads``) w.r.t. params and inputs;
* float32 / bfloat16 / float64 are preserved through outputs, carries and gradients;
* invariants: zero peepholes == no peepholes, CIFG's ``i == 1 - f``, NFG accumulates,
  ``forget_bias`` lands in the forget block only, init shapes of every option, orthogonal
  recurrent blocks, ``pytorch_uniform`` bounds, the nine ``GREFF_VARIANTS``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax import initializers

import reference as ref  # tests/reference.py (tests/ is on sys.path under pytest)

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
B, T, I, H, P = 2, 5, 3, 4, 2
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)

CELLS = {
    "rnn_tanh": lambda: lj.rnn(H),
    "rnn_relu": lambda: lj.rnn(H, activation="relu"),
    "lstm": lambda: lj.lstm(H),
    "lstm_peephole": lambda: lj.lstm(H, peephole=True),
    "lstm_coupled": lambda: lj.lstm(H, coupled=True),
    "lstm_no_input_gate": lambda: lj.lstm(H, input_gate=False),
    "lstm_no_forget_gate": lambda: lj.lstm(H, forget_gate=False),
    "lstm_no_output_gate": lambda: lj.lstm(H, output_gate=False),
    "lstm_input_identity": lambda: lj.lstm(H, input_activation="identity"),
    "lstm_output_identity": lambda: lj.lstm(H, output_activation="identity"),
    "lstm_relu_sigmoid": lambda: lj.lstm(H, input_activation="relu", output_activation="sigmoid"),
    "lstm_fgr": lambda: lj.lstm(H, full_gate_recurrence=True),
    "lstm_fgr_coupled": lambda: lj.lstm(H, full_gate_recurrence=True, coupled=True),
    "lstm_fgr_no_output_gate": lambda: lj.lstm(H, full_gate_recurrence=True, output_gate=False),
    "lstm_proj": lambda: lj.lstm(H, proj_size=P),
    "lstm_proj_peephole": lambda: lj.lstm(H, proj_size=P, peephole=True),
    "lstm_proj_peephole_fgr": lambda: lj.lstm(H, proj_size=P, peephole=True, full_gate_recurrence=True),
    "lstm_layer_norm": lambda: lj.lstm(H, layer_norm=True),
    "lstm_layer_norm_peephole_cifg": lambda: lj.lstm(H, layer_norm=True, peephole=True, coupled=True),
    "lstm_derivative_clip": lambda: lj.lstm(H, derivative_clip=0.05),
    **{f"greff_{v}": functools.partial(lj.greff_variant, v, H) for v in lj.GREFF_VARIANTS},
    "gru": lambda: lj.gru(H),
    "gru_reset_before": lambda: lj.gru(H, reset_after=False),
    "mut1": lambda: lj.mut1(H),
    "mut2": lambda: lj.mut2(H),
    "mut3": lambda: lj.mut3(H),
}
INPUT_SIZE = {"mut1": H, "mut2": H}  # MUT1/MUT2 add x to a hidden-sized pre-activation
DTYPE_CONFIGS = ["rnn_tanh", "lstm_proj_peephole_fgr", "lstm_layer_norm", "gru", "mut3"]  # one per family
GRAD_CONFIGS = ["rnn_tanh", "lstm", "lstm_proj_peephole", "lstm_fgr", "lstm_coupled", "lstm_layer_norm", "gru",
                "gru_reset_before", "mut1", "mut2", "mut3"]
all_cells = pytest.mark.parametrize("name", list(CELLS))


# ------------------------------------------------------------------- adapters to the reference

REFERENCES = {"rnn": ref.rnn, "lstm": ref.lstm, "gru": ref.gru, "mut1": ref.mut1, "mut2": ref.mut2,
              "mut3": ref.mut3}
# Fused blocks along the last axis, as documented: LSTM (i, f, g, o) minus switched-off gates
# (a coupled input gate has no block); GRU (r, z, n); MUT bias (z, r, h), MUT kernels the
# learned subset in the same order.
MUT_KERNELS = {"mut1": "zr", "mut2": "zh", "mut3": "zrh"}


def family(cell):
    """The reference family of a cell, from its typed config."""
    config = cell.config
    if isinstance(config, lj.MUTConfig):
        return config.variant
    return {lj.RNNConfig: "rnn", lj.LSTMConfig: "lstm", lj.GRUConfig: "gru"}[type(config)]


def options(cell):
    """A cell's hyper-parameters by name (its config's fields)."""
    return {f.name: getattr(cell.config, f.name) for f in dataclasses.fields(cell.config)}


def lstm_blocks(opts):
    """(all blocks, sigmoid blocks) of an LSTM, as letters in fused order."""
    on = {"i": opts["input_gate"] and not opts["coupled"], "f": opts["forget_gate"], "g": True,
          "o": opts["output_gate"]}
    blocks = [k for k in "ifgo" if on[k]]
    return blocks, [k for k in blocks if k != "g"]


def split(a, names, prefix=""):
    """``a[..., n*H]`` -> ``{prefix + name: a[..., H]}`` in float64."""
    a = np.asarray(a, np.float64)
    n = a.shape[-1] // len(names)
    return {f"{prefix}{k}": a[..., j * n:(j + 1) * n] for j, k in enumerate(names)}


def ref_params(cell, params):
    """Our fused params -> the reference's per-gate dict."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    if family(cell) == "rnn":
        return {"W_x": p.w_x, "W_h": p.w_h, "b": p.b}
    if family(cell) == "gru":
        out = {**split(p.w_x, "rzn", "W_x"), **split(p.w_h, "rzn", "W_h"), **split(p.b, "rzn", "b_")}
        return out if p.b_hn is None else dict(out, b_hn=p.b_hn)
    if family(cell) in MUT_KERNELS:
        out = {**split(p.w_x, MUT_KERNELS[family(cell)], "W_x"), **split(p.b, "zrh", "b_"),
               "W_hr": p.w_hr, "W_hh": p.w_hh}
        return out if p.w_hz is None else dict(out, W_hz=p.w_hz)
    blocks, sig = lstm_blocks(options(cell))
    out = {**split(p.w_x, blocks, "W_x"), **split(p.w_h, blocks, "W_h"), **split(p.b, blocks, "b_")}
    for k, v in (("i", p.peephole_i), ("f", p.peephole_f), ("o", p.peephole_o)):
        if v is not None:
            out[f"p_{k}"] = v
    if p.w_gates is not None:  # [S*H, S*H]: row block s (previous gate) -> column block k
        for j, s in enumerate(sig):
            out.update({f"R_{s}{k}": w for k, w in split(p.w_gates[j * H:(j + 1) * H], sig).items()})
    if p.w_proj is not None:
        out["W_proj"] = p.w_proj
    if p.ln_x_gain is not None:
        out.update({**split(p.ln_x_gain, blocks, "a_x"), **split(p.ln_h_gain, blocks, "a_h"),
                    "a_c": p.ln_c_gain, "b_c": p.ln_c_bias})
    return out


def ref_state(cell, carry):
    """Our carry NamedTuple -> the reference's state dict (float64)."""
    f64 = lambda a: np.asarray(a, np.float64)
    if family(cell) != "lstm":
        return {"h": f64(carry.hidden)}
    state = {"h": f64(carry.hidden), "c": f64(carry.cell)}
    if carry.gates is not None:
        state["prev"] = split(carry.gates, lstm_blocks(options(cell))[1])
    return state


def run_reference(cell, params, xs, carry=None):
    """The reference for ``cell``'s family on our params, inputs and (optional) carry."""
    if family(cell) == "lstm":  # every constructor option except sizes and the init-only bias
        opts = {k: v for k, v in options(cell).items()
                if k not in ("hidden_size", "forget_bias", "kernel_init", "recurrent_init", "bias_init")}
    else:
        opts = {k: options(cell)[k] for k in {"rnn": ["activation"], "gru": ["reset_after"]}.get(family(cell), [])}
    state = None if carry is None else ref_state(cell, carry)
    return REFERENCES[family(cell)](ref_params(cell, params), np.asarray(xs, np.float64), state, **opts)


# ------------------------------------------------------------------------------------ helpers

assert_tree_close = helpers.assert_trees_close
normal, perturb = helpers.normal, helpers.perturb  # N(0, 1) arrays; add scale * N(0, 1) to every leaf


def random_carry(cell, params, rng, batch_shape):
    """A random carry; the FGR gate slots get values in (0, 1) like real sigmoid activations."""
    carry = perturb(cell.init_carry(params, batch_shape), rng)
    if getattr(carry, "gates", None) is None:
        return carry
    return carry._replace(gates=jnp.asarray(ref.sigmoid(np.asarray(carry.gates)), carry.gates.dtype))


def random_params(cell, input_size, seed):
    """``cell.init`` at float64, then every leaf perturbed."""
    return perturb(cell.init(jax.random.key(seed), input_size, dtype=F64), np.random.default_rng(seed))


@functools.cache
def setup(name, dtype=F64, seed=0):
    """(cell, params, xs [B, T, I], carry [B, *]) with everything random, at ``dtype``."""
    cell = CELLS[name]()
    n_in = INPUT_SIZE.get(name, I)
    params = random_params(cell, n_in, seed)
    rng = np.random.default_rng(seed + 100)
    xs = normal(rng, (B, T, n_in))
    carry = random_carry(cell, params, rng, (B,))
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
    return cell, cast(params), cast(xs), cast(carry)


# ------------------------------------------------------------------- agreement with reference

@all_cells
def test_unroll_matches_reference_f64(name):
    cell, params, xs, carry = setup(name)
    ys, final = jax.jit(lambda p, x, c: lj.unroll(cell, p, x, c))(params, xs, carry)
    want_ys, want_state, _ = run_reference(cell, params, xs, carry)
    assert ys.shape == (B, T, cell.output_size)
    np.testing.assert_allclose(ys, want_ys, **TOL64)
    assert_tree_close(ref_state(cell, final), want_state, **TOL64)


@all_cells
def test_unroll_matches_reference_f32(name):
    cell, params, xs, _ = setup(name, F32)
    ys, final = jax.jit(lambda p, x: lj.unroll(cell, p, x))(params, xs)
    assert ys.dtype == F32
    # the reference runs at float64 on the float32-rounded params and inputs
    want_ys, want_state, _ = run_reference(cell, params, xs)
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **TOL32)
    assert_tree_close(ref_state(cell, final), want_state, **TOL32)


@all_cells
def test_gates_match_reference(name):
    cell, params, xs, carry = setup(name)
    ys, final, aux = jax.jit(lambda p, x, c: lj.unroll(cell, p, x, c, return_gates=True))(params, xs, carry)
    want_ys, want_state, want_acts = run_reference(cell, params, xs, carry)
    assert set(aux.gates) == set(want_acts)
    assert_tree_close(aux.gates, want_acts, **TOL64)
    np.testing.assert_allclose(ys, want_ys, **TOL64)  # the gates path computes the same outputs
    assert_tree_close(ref_state(cell, final), want_state, **TOL64)


@all_cells
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)], ids=str)
def test_step_is_recur_of_project_and_one_reference_step(name, batch_shape):
    cell, params, _, _ = setup(name)
    rng = np.random.default_rng(1)
    x = normal(rng, batch_shape + (params.w_x.shape[0],))
    carry = random_carry(cell, params, rng, batch_shape)
    new, y = cell.step(params, carry, x)
    new2, y2 = cell.recur(params, carry, cell.project(params, x))
    assert y.shape == batch_shape + (cell.output_size,)
    assert_tree_close(new, jax.tree.map(np.asarray, new2), rtol=0, atol=0)
    np.testing.assert_array_equal(y, y2)

    flat = lambda a: np.asarray(a).reshape(-1, np.shape(a)[-1])  # [..., n] -> [B', n]
    want_ys, want_state, _ = run_reference(cell, params, flat(x)[:, None], jax.tree.map(flat, carry))
    np.testing.assert_allclose(flat(y), want_ys[:, 0], **TOL64)
    assert_tree_close(ref_state(cell, jax.tree.map(flat, new)), want_state, **TOL64)


# ------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("name", GRAD_CONFIGS)
def test_gradients_match_finite_differences(name):
    cell = CELLS[name]()
    n_in = INPUT_SIZE.get(name, I)
    params = random_params(cell, n_in, seed=2)
    xs = normal(np.random.default_rng(2), (2, 3, n_in))
    f = jax.jit(lambda p, x: lj.unroll(cell, p, x))
    check_grads(f, (params, xs), order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-6)


def test_derivative_clip_clips_the_gradient_into_the_gates():
    """Graves 2013: dL/d(gate pre-activation) is clipped at every step; the forward is unchanged.

    With one step from a zero carry, dL/db is exactly dL/d(pre-activation), so the clipped
    cell's bias gradient must be the unclipped one clipped; over T steps and B sequences
    each bias entry sums at most B*T clipped terms.
    """
    bound = 0.05
    plain, clipped = lj.lstm(H), lj.lstm(H, derivative_clip=bound)
    params = random_params(plain, I, seed=3)
    xs = 3.0 * normal(np.random.default_rng(3), (B, T, I))
    loss = lambda cell, steps: jax.value_and_grad(
        lambda p: jnp.sum(lj.unroll(cell, p, xs[:1, :steps])[0] ** 2))(params)
    (l_plain, g_plain), (l_clip, g_clip) = loss(plain, 1), loss(clipped, 1)
    assert float(l_plain) == float(l_clip)
    assert np.abs(np.asarray(g_plain.b)).max() > bound  # the bound really bites
    np.testing.assert_allclose(g_clip.b, np.clip(g_plain.b, -bound, bound), **TOL64)

    g_many = jax.grad(lambda p: jnp.sum(lj.unroll(clipped, p, xs)[0] ** 2))(params)
    assert np.abs(np.asarray(g_many.b)).max() <= B * T * bound + 1e-12
    loose = lj.lstm(H, derivative_clip=1e6)  # never reached: gradients are exactly unclipped
    g_loose = jax.grad(lambda p: jnp.sum(lj.unroll(loose, p, xs)[0] ** 2))(params)
    g_free = jax.grad(lambda p: jnp.sum(lj.unroll(plain, p, xs)[0] ** 2))(params)
    assert_tree_close(g_loose, g_free)


# ------------------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("name", DTYPE_CONFIGS)
@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=lambda d: jnp.dtype(d).name)
def test_dtype_preserved(name, dtype):
    cell, params, xs, _ = setup(name, dtype)

    def loss(p, x):
        ys, carry = lj.unroll(cell, p, x)
        return jnp.sum(ys) + sum(jnp.sum(c) for c in jax.tree.leaves(carry)), (ys, carry)

    (_, (ys, carry)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs)
    for leaf in jax.tree.leaves((ys, carry, grads)):
        assert leaf.dtype == dtype
    # values still follow the reference (bfloat16 has ~3 significant digits)
    want_ys, _, _ = run_reference(cell, params, xs)
    tol = {F64: TOL64, F32: TOL32, BF16: dict(rtol=0.05, atol=0.05)}[dtype]
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **tol)


# ---------------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("proj_size", [None, P])
def test_zero_peepholes_equal_no_peepholes(proj_size):
    with_p = lj.lstm(H, peephole=True, proj_size=proj_size)
    params = random_params(with_p, I, seed=3)
    zero = jnp.zeros((H,), F64)
    params = params._replace(peephole_i=zero, peephole_f=zero, peephole_o=zero)
    plain = lj.lstm(H, proj_size=proj_size)
    plain_params = params._replace(peephole_i=None, peephole_f=None, peephole_o=None)
    xs = normal(np.random.default_rng(3), (B, T, I))
    got = lj.unroll(with_p, params, xs)
    want = lj.unroll(plain, plain_params, xs)
    assert_tree_close(got, jax.tree.map(np.asarray, want), rtol=1e-15, atol=1e-15)
    # and a nonzero peephole does change the result, so the test above has teeth
    moved = lj.unroll(with_p, params._replace(peephole_f=zero + 0.5), xs)[0]
    assert np.max(np.abs(np.asarray(moved) - np.asarray(want[0]))) > 1e-3


@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", ["lstm_coupled", "greff_CIFG", "lstm_fgr_coupled"])
def test_coupled_input_is_one_minus_forget(name, dtype):
    cell, params, xs, _ = setup(name, dtype)
    assert params.peephole_i is None and params.b.shape == (3 * H,)
    _, _, aux = lj.unroll(cell, params, xs, return_gates=True)
    f = np.asarray(aux.gates["forget"])
    np.testing.assert_array_equal(np.asarray(aux.gates["input"]), (1 - f).astype(f.dtype))


def test_no_forget_gate_accumulates():
    cell, params, xs, carry = setup("greff_NFG")
    assert params.peephole_f is None and params.b.shape == (3 * H,)
    _, _, aux = lj.unroll(cell, params, xs, carry, return_gates=True, return_carries=True)
    assert "forget" not in aux.gates
    c_prev = np.concatenate([np.asarray(carry.cell)[:, None], np.asarray(aux.carries.cell)[:, :-1]], axis=1)
    np.testing.assert_allclose(aux.carries.cell, c_prev + np.asarray(aux.gates["input"] * aux.gates["candidate"]),
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("options, forget_block", [
    (dict(), 1), (dict(peephole=True), 1), (dict(coupled=True), 0), (dict(input_gate=False), 0),
    (dict(output_gate=False), 1), (dict(forget_gate=False), None), (dict(proj_size=P), 1),
    (dict(full_gate_recurrence=True), 1),
])
@pytest.mark.parametrize("forget_bias", [1.0, 2.5])
def test_forget_bias_only_in_forget_block(options, forget_block, forget_bias):
    cell = lj.lstm(H, forget_bias=forget_bias, **options)
    b = np.asarray(cell.init(jax.random.key(0), I, dtype=F64).b)
    want = np.zeros_like(b)
    if forget_block is not None:
        want[forget_block * H:(forget_block + 1) * H] = forget_bias
    np.testing.assert_array_equal(b, want)


def _shapes(tree):
    return {k: None if v is None else tuple(v.shape) for k, v in tree._asdict().items()}


# expected (params, carry for batch (3,)) shapes, written from the docstrings; O is P or H
_LSTM_SHAPES = {  # name: (G, S, peepholes present (i, f, o), O)
    "lstm": (4, 3, (0, 0, 0), H), "lstm_peephole": (4, 3, (1, 1, 1), H),
    "lstm_coupled": (3, 2, (0, 0, 0), H), "greff_CIFG": (3, 2, (0, 1, 1), H),
    "greff_NIG": (3, 2, (0, 1, 1), H), "greff_NFG": (3, 2, (1, 0, 1), H),
    "greff_NOG": (3, 2, (1, 1, 0), H), "lstm_fgr": (4, 3, (0, 0, 0), H),
    "lstm_fgr_coupled": (3, 2, (0, 0, 0), H), "greff_FGR": (4, 3, (1, 1, 1), H),
    "lstm_proj": (4, 3, (0, 0, 0), P), "lstm_proj_peephole_fgr": (4, 3, (1, 1, 1), P),
    "lstm_layer_norm_peephole_cifg": (3, 2, (0, 1, 1), H),
}


@pytest.mark.parametrize("name", list(_LSTM_SHAPES))
def test_lstm_init_shapes(name):
    G, S, (pi, pf, po), O = _LSTM_SHAPES[name]
    cell = CELLS[name]()
    fgr, proj = options(cell)["full_gate_recurrence"], options(cell)["proj_size"]
    params = cell.init(jax.random.key(0), I, dtype=F64)
    peep = lambda on: (H,) if on else None
    ln = lambda n: (n,) if options(cell)["layer_norm"] else None
    assert _shapes(params) == dict(
        w_x=(I, G * H), w_h=(O, G * H), b=(G * H,), peephole_i=peep(pi), peephole_f=peep(pf),
        peephole_o=peep(po), w_gates=(S * H, S * H) if fgr else None, w_proj=(H, P) if proj else None,
        ln_x_gain=ln(G * H), ln_h_gain=ln(G * H), ln_c_gain=ln(H), ln_c_bias=ln(H))
    assert _shapes(cell.init_carry(params, (3,))) == dict(hidden=(3, O), cell=(3, H),
                                                          gates=(3, S * H) if fgr else None)
    assert cell.output_size == O and cell.hidden_size == H


@pytest.mark.parametrize("name, want", [
    ("rnn_tanh", dict(w_x=(I, H), w_h=(H, H), b=(H,))),
    ("gru", dict(w_x=(I, 3 * H), w_h=(H, 3 * H), b=(3 * H,), b_hn=(H,))),
    ("gru_reset_before", dict(w_x=(I, 3 * H), w_h=(H, 3 * H), b=(3 * H,), b_hn=None)),
    ("mut1", dict(w_x=(H, 2 * H), b=(3 * H,), w_hz=None, w_hr=(H, H), w_hh=(H, H))),
    ("mut2", dict(w_x=(H, 2 * H), b=(3 * H,), w_hz=(H, H), w_hr=(H, H), w_hh=(H, H))),
    ("mut3", dict(w_x=(I, 3 * H), b=(3 * H,), w_hz=(H, H), w_hr=(H, H), w_hh=(H, H))),
])
def test_other_init_shapes(name, want):
    cell = CELLS[name]()
    params = cell.init(jax.random.key(0), INPUT_SIZE.get(name, I), dtype=F64)
    assert _shapes(params) == want
    assert _shapes(cell.init_carry(params, (2, 3))) == dict(hidden=(2, 3, H))


def _assert_orthonormal(w, tol):
    """Orthonormal columns (tall or square) or rows (wide)."""
    w = np.asarray(w, np.float64)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=tol)


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "lstm_proj_peephole_fgr", "gru", "mut3"])
def test_recurrent_blocks_are_orthogonal(name):
    cell = CELLS[name]()
    params = cell.init(jax.random.key(4), I, dtype=F64)
    if family(cell) in MUT_KERNELS:
        blocks = [params.w_hz, params.w_hr, params.w_hh]
    else:  # each [O, H] block of w_h (and each [S*H, H] block of w_gates) on its own
        blocks = list(split(params.w_h, range(params.w_h.shape[1] // H)).values())
        if getattr(params, "w_gates", None) is not None:
            blocks += list(split(params.w_gates, range(3)).values())
    for w in blocks:
        _assert_orthonormal(w, 1e-12)
    if len(blocks) > 1:
        assert not np.allclose(blocks[0], blocks[1])  # independent draws per gate


@pytest.mark.parametrize("shape", [(5, 5), (7, 3), (3, 7)], ids=str)
@pytest.mark.parametrize("dtype, tol", [(F64, 1e-12), (F32, 1e-5), (BF16, 3e-2)], ids=["f64", "f32", "bf16"])
def test_orthogonal_initializer(shape, dtype, tol):
    w = initializers.orthogonal()(jax.random.key(5), shape, dtype)
    assert w.dtype == dtype and w.shape == shape
    _assert_orthonormal(w, tol)
    w2 = initializers.orthogonal(scale=2.0)(jax.random.key(5), shape, F64)
    _assert_orthonormal(np.asarray(w2) / 2.0, 1e-12)


@pytest.mark.parametrize("hidden_size", [4, 16, 100])
@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: jnp.dtype(d).name)
def test_pytorch_uniform_bounds(hidden_size, dtype):
    bound = 1.0 / np.sqrt(hidden_size)
    w = np.asarray(initializers.pytorch_uniform(hidden_size)(jax.random.key(6), (200, 100), dtype))
    assert w.dtype == dtype
    assert np.all(np.abs(w) <= bound)
    assert w.min() < -0.98 * bound and w.max() > 0.98 * bound  # fills the interval
    assert abs(w.mean()) < 0.02 * bound and abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound


def test_greff_variants():
    assert set(lj.GREFF_VARIANTS) == {"V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR"}
    vanilla = options(lj.greff_variant("V", H))
    assert vanilla["peephole"] is True
    changed = {  # each variant changes exactly one thing relative to V (Greff et al. 2015)
        "NIG": {"input_gate": False}, "NFG": {"forget_gate": False}, "NOG": {"output_gate": False},
        "NIAF": {"input_activation": "identity"}, "NOAF": {"output_activation": "identity"},
        "NP": {"peephole": False}, "CIFG": {"coupled": True}, "FGR": {"full_gate_recurrence": True},
    }
    for name, diff in changed.items():
        opts = options(lj.greff_variant(name, H))
        assert {k: v for k, v in opts.items() if vanilla[k] != v} == diff, name
    assert lj.greff_variant("NP", H, forget_bias=0.0).config.forget_bias == 0.0
    with pytest.raises(ValueError, match="`name` must be one of"):
        lj.greff_variant("LSTM", H)
