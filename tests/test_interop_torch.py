"""PyTorch interop: ``from_torch`` layers compute exactly what ``nn.RNN``/``nn.LSTM``/``nn.GRU``
compute (outputs, final states, gradients, initial states, padded batches) and are typed,
hashable configs, ``to_torch`` goes back, the converters refuse what PyTorch cannot express
(naming it), and the library never needs torch."""

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import helpers  # noqa: E402  (tests/helpers.py)
import lstm_jax as lj  # noqa: E402
from lstm_jax.interop.torch import carry_from_torch, carry_to_torch, from_torch, to_torch  # noqa: E402

I, H, P, T, B = 3, 5, 2, 6, 3
DTYPES = {"f32": (torch.float32, 1e-5), "f64": (torch.float64, 1e-10)}
KINDS = {
    "rnn_tanh": (torch.nn.RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (torch.nn.RNN, dict(nonlinearity="relu")),
    "lstm": (torch.nn.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, dict(proj_size=P)),
    "gru": (torch.nn.GRU, {}),
}
# (num_layers, bidirectional, batch_first, bias): the full grid, and a subset covering
# every value of every factor twice.
GRID = list(itertools.product((1, 2), (False, True), (False, True), (True, False)))
SUBSET = [(1, False, True, True), (2, True, False, False), (2, False, False, True), (1, True, True, False)]
CASES = [("lstm", c) for c in GRID] + [(k, c) for k in KINDS if k != "lstm" for c in SUBSET]


def make(kind, num_layers=2, bidirectional=True, batch_first=True, bias=True, dtype=torch.float64,
         **extra):
    torch.manual_seed(0)
    cls, kwargs = KINDS[kind]
    return cls(I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
               bias=bias, dtype=dtype, **kwargs, **extra)


def inputs(module, batch=(B,)):
    torch.manual_seed(1)
    shape = (T, I) if not batch else ((B, T, I) if module.batch_first else (T, B, I))
    return torch.randn(shape, dtype=module.weight_ih_l0.dtype)


def run_ours(module, x, carry=None, **kwargs):
    layer, params = from_torch(module)
    return jax.jit(layer.apply)(params, jnp.asarray(x.detach().numpy()), carry, **kwargs)


def as_tuple(hidden):
    return hidden if isinstance(hidden, tuple) else (hidden,)


def assert_close(ours, ref, tol):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    np.testing.assert_allclose(ours, ref, rtol=0, atol=tol)


def assert_states_close(ours, ref, tol):
    ours, ref = as_tuple(ours), as_tuple(ref)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert_close(a, b, tol)


def directions(module):
    return [(k, d) for k in range(module.num_layers) for d in range(1 + module.bidirectional)]


def sub_params(params, module, k, d):
    return params[k][d] if module.bidirectional else params[k]


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, config", CASES)
def test_outputs_and_final_states_match_pytorch(kind, config, dtype):
    torch_dtype, tol = DTYPES[dtype]
    module = make(kind, *config, dtype=torch_dtype)
    x = inputs(module)
    y_ref, hidden_ref = module(x)
    ys, carry = run_ours(module, x)
    assert_close(ys, y_ref, tol)
    assert_states_close(carry_to_torch(carry), hidden_ref, tol)


def test_from_torch_structure_is_a_stack_of_per_layer_params():
    module = make("lstm_proj", num_layers=1, bidirectional=False, batch_first=False, dtype=torch.float32)
    layer, params = from_torch(module)
    assert isinstance(layer.config, lj.StackConfig) and len(layer.config.layers) == 1
    assert layer.config.layers[0].config == lj.LayerConfig(lj.lstm(H, forget_bias=0.0, proj_size=P),
                                                           time_major=True)
    assert layer.time_major and layer.output_size == P
    assert isinstance(params, tuple) and isinstance(params[0], lj.LSTMParams)
    assert params[0].w_x.shape == (I, 4 * H) and params[0].w_h.shape == (P, 4 * H)
    assert params[0].w_proj.shape == (H, P)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}


def test_from_torch_layers_are_typed_hashable_and_equal_by_config():
    a, params = from_torch(make("gru"))
    b, _ = from_torch(make("gru"))
    c, _ = from_torch(make("gru", batch_first=False))
    assert a == b and hash(a) == hash(b) and a != c and len({a, b, c}) == 2
    assert a == lj.stack([lj.bidirectional(lj.gru(H), lj.gru(H), merge="concat")] * 2)
    assert repr(a) == ("stack([bidirectional(layer(gru(5)), layer(gru(5), reverse=True), merge='concat'), "
                       "bidirectional(layer(gru(5)), layer(gru(5), reverse=True), merge='concat')])")
    xs = jnp.asarray(inputs(make("gru")).numpy())
    traces, (ya, yb) = helpers.traces_with_static(lambda l, p, x: l.apply(p, x)[0], (a, params, xs), (b, params, xs))
    np.testing.assert_array_equal(ya, yb)
    assert traces == [a]  # equal layers share one compiled program


def test_unbatched_input_matches_pytorch():
    module = make("lstm")
    x = inputs(module, batch=())
    y_ref, hidden_ref = module(x)
    ys, carry = run_ours(module, x)
    assert_close(ys, y_ref, 1e-10)
    assert_states_close(carry_to_torch(carry), hidden_ref, 1e-10)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
def test_initial_state_through_carry_from_torch(kind):
    module = make(kind, batch_first=False)
    x = inputs(module)
    torch.manual_seed(2)
    h0 = torch.randn(4, B, P if kind == "lstm_proj" else H, dtype=torch.float64)
    hidden = (h0, torch.randn(4, B, H, dtype=torch.float64)) if kind.startswith("lstm") else h0
    layer, _ = from_torch(module)
    carry = carry_from_torch(layer, *as_tuple(hidden))
    assert_states_close(carry_to_torch(carry), hidden, 0.0)  # exact round trip of the state
    y_ref, hidden_ref = module(x, hidden)
    ys, carry = run_ours(module, x, carry)
    assert_close(ys, y_ref, 1e-10)
    assert_states_close(carry_to_torch(carry), hidden_ref, 1e-10)
    # The initial state matters: without it the outputs differ.
    assert not np.allclose(np.asarray(run_ours(module, x)[0]), y_ref.detach().numpy(), atol=1e-3)


# --------------------------------------------------------------------------- gradients


def torch_grads(module, k, d):
    """PyTorch's .grad of one direction, mapped to our field names independently of the library."""
    s = f"_l{k}" + ("_reverse" if d else "")
    g = lambda name: getattr(module, name + s).grad.numpy()
    b_ih, b_hh = g("bias_ih"), g("bias_hh")
    gru = module.mode == "GRU"
    shared = 2 * H if gru else b_ih.shape[0]  # blocks where our b = b_ih + b_hh
    np.testing.assert_allclose(b_hh[:shared], b_ih[:shared], rtol=0, atol=1e-12)
    out = {"w_x": g("weight_ih").T, "w_h": g("weight_hh").T, "b": b_ih}
    if gru:
        out["b_hn"] = b_hh[2 * H:]
    if module.proj_size:
        out["w_proj"] = g("weight_hr").T
    return out


@pytest.mark.parametrize("config", [(2, True, True), (1, False, False)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gradients_match_pytorch_autograd(kind, config):
    module = make(kind, *config)
    x = inputs(module).requires_grad_(True)
    y, _ = module(x)
    torch.manual_seed(3)
    w = torch.randn(y.shape, dtype=torch.float64)
    (y * w).sum().backward()

    layer, params = from_torch(module)
    w_j = jnp.asarray(w.numpy())
    loss = lambda p, xs: jnp.sum(layer.apply(p, xs)[0] * w_j)
    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(x.detach().numpy()))

    assert_close(g_x, x.grad, 1e-8)
    for k, d in directions(module):
        ours = sub_params(g_params, module, k, d)
        ref = torch_grads(module, k, d)
        assert {f for f, v in ours._asdict().items() if v is not None} == set(ref)
        for field, value in ref.items():
            assert_close(getattr(ours, field), value, 1e-8)


# --------------------------------------------------------------------------- padded batches


@pytest.mark.parametrize("batch_first", [True, False])
def test_lengths_equal_each_unpadded_sequence_in_pytorch(batch_first):
    module = make("lstm", batch_first=batch_first)
    x = inputs(module)
    lengths = np.array([T, 3, 1])
    ys, carry = run_ours(module, x, lengths=jnp.asarray(lengths))
    h_n, c_n = carry_to_torch(carry)
    ys = np.asarray(ys) if batch_first else np.swapaxes(np.asarray(ys), 0, 1)  # [B, T, 2H]
    x_bt = x if batch_first else x.transpose(0, 1)
    for b, n in enumerate(lengths):
        seq = x_bt[b:b + 1, :n] if batch_first else x_bt[b:b + 1, :n].transpose(0, 1)
        y_ref, (h_ref, c_ref) = module(seq)
        y_ref = y_ref[0] if batch_first else y_ref[:, 0]
        assert_close(ys[b, :n], y_ref, 1e-10)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        assert_close(h_n[:, b], h_ref[:, 0], 1e-10)
        assert_close(c_n[:, b], c_ref[:, 0], 1e-10)


# --------------------------------------------------------------------------- to_torch


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_reproduces_module_and_params(kind):
    module = make(kind, batch_first=False, dropout=0.25).eval()
    layer, params = from_torch(module)
    assert layer.config.dropout_rate == 0.25
    back = to_torch(layer, params).eval()
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(back, attr) == getattr(module, attr), attr
    x = inputs(module)
    (y_ref, h_ref), (y_back, h_back) = module(x), back(x)
    assert_close(y_back, y_ref, 1e-12)
    assert_states_close(h_back, h_ref, 1e-12)
    # Our bias goes wholly into bias_ih, so converting again gives back the very same params.
    _, params_again = from_torch(back)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_again, params)


FRESH = {
    "lstm_f32": (lambda: lj.stack([lj.lstm(5), lj.lstm(5)]), jnp.float32, 1e-5),
    "lstm_proj": (lambda: lj.stack([lj.lstm(5, proj_size=2)] * 2, time_major=True), jnp.float64, 1e-10),
    "gru_bidir": (lambda: lj.stack([lj.bidirectional(lj.gru(4), lj.gru(4))], time_major=True),
                  jnp.float64, 1e-10),
    "rnn_relu": (lambda: lj.stack([lj.rnn(4, activation="relu")] * 2, dropout_rate=0.5), jnp.float64, 1e-10),
}


@pytest.mark.parametrize("name", FRESH)
def test_to_torch_of_a_fresh_stack(name):
    build, dtype, tol = FRESH[name]
    layer = build()
    params = layer.init(jax.random.key(0), I, dtype=dtype)
    module = to_torch(layer, params).eval()
    assert module.batch_first == (not layer.time_major)
    xs = jax.random.normal(jax.random.key(1), (T, B, I) if layer.time_major else (B, T, I), dtype)
    ys, carry = jax.jit(layer.apply)(params, xs)
    y_ref, hidden_ref = module(torch.from_numpy(np.array(xs)))
    assert_close(ys, y_ref, tol)
    assert_states_close(carry_to_torch(carry), hidden_ref, tol)


UNSUPPORTED = {
    "peepholes": (lambda: lj.stack([lj.lstm(4, peephole=True)]), "peepholes"),
    "layer_norm": (lambda: lj.stack([lj.lstm(4, layer_norm=True)]), "layer normalisation"),
    "coupled": (lambda: lj.stack([lj.lstm(4, coupled=True)]), "coupled input-forget"),
    "no forget gate": (lambda: lj.stack([lj.lstm(4, forget_gate=False)]), "without a forget gate"),
    "identity output": (lambda: lj.stack([lj.lstm(4, output_activation="identity")]), "output activations"),
    "gru reset_after": (lambda: lj.stack([lj.gru(4, reset_after=False)]), "reset_after=False"),
    "mut": (lambda: lj.stack([lj.mut3(4)]), r"layers\[0\]: cell 'mut3' has no PyTorch equivalent .*got mut3\(4\)"),
    "min_gru": (lambda: lj.stack([lj.min_gru(4)]), r"cell 'min_gru' has no PyTorch equivalent .*got min_gru\(4\)"),
    "sizes": (lambda: lj.stack([lj.lstm(4), lj.lstm(5)]), "different sizes"),
    "proj sizes": (lambda: lj.stack([lj.lstm(4, proj_size=2), lj.lstm(4, proj_size=3)]), "different sizes"),
    "types": (lambda: lj.stack([lj.lstm(4), lj.gru(4)]), "different types"),
    "directions": (lambda: lj.stack([lj.bidirectional(lj.gru(4), lj.gru(4)), lj.gru(4)]), "mixed directions"),
    "merge": (lambda: lj.stack([lj.bidirectional(lj.gru(4), lj.gru(4), merge="sum")]), "merge='sum'"),
    "reverse only": (lambda: lj.stack([lj.layer(lj.gru(4), reverse=True)]), "reverse-only"),
    "not a stack": (lambda: lj.layer(lj.lstm(4)), r"must be a stack .* got layer\(lstm\(4\)\)"),
    "learned carry": (lambda: lj.stack([lj.layer(lj.lstm(4), learn_initial_carry=True)]), "learned initial carry"),
    "nested stack": (lambda: lj.stack([lj.stack([lj.lstm(4)])]), "nested stacks"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_to_torch_refuses_what_pytorch_cannot_express(name):
    build, message = UNSUPPORTED[name]
    layer = build()
    # Refusal depends on the structure alone: shapes-only params spare compiling each init.
    params = jax.eval_shape(lambda: layer.init(jax.random.key(0), 4, dtype=jnp.float32))
    with pytest.raises(ValueError, match=message):
        to_torch(layer, params)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("module", [torch.nn.Linear(2, 3), torch.nn.LSTMCell(2, 3)], ids=["linear", "lstm_cell"])
def test_from_torch_rejects_other_modules(module):
    with pytest.raises(TypeError, match=f"`module` must be .* got {type(module).__name__}"):
        from_torch(module)


def test_carry_conversion_errors():
    lstm_layer, _ = from_torch(make("lstm"))  # 2 layers x 2 directions
    gru_layer, _ = from_torch(make("gru"))
    h0 = torch.zeros(4, B, H, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`h0` must have shape \[4, \.\.\., O\]"):
        carry_from_torch(lstm_layer, h0[:3], h0[:3])
    with pytest.raises(ValueError, match="`c0` is required for LSTM"):
        carry_from_torch(lstm_layer, h0)
    with pytest.raises(ValueError, match="only for them"):
        carry_from_torch(gru_layer, h0, h0)
    with pytest.raises(ValueError, match="needs `h0\\[0\\]` of size 5"):
        carry_from_torch(gru_layer, h0[..., :4])
    with pytest.raises(ValueError, match="must be a stack"):
        carry_from_torch(lstm_layer.config.layers[0], h0, h0)
    with pytest.raises(ValueError, match=r"cell lstm\(5, .*full_gate_recurrence=True\) has a state PyTorch cannot"):
        carry_from_torch(lj.stack([lj.greff_variant("FGR", H)]), h0[:1], h0[:1])
    with pytest.raises(ValueError, match=r"cell min_gru\(5\) has a state PyTorch cannot express"):
        carry_from_torch(lj.stack([lj.min_gru(H)]), h0[:1])
    with pytest.raises(ValueError, match="mixes LSTM and non-LSTM cells"):
        carry_from_torch(lj.stack([lj.lstm(H), lj.gru(H)]), h0[:2], h0[:2])
    mut = carry_from_torch(lj.stack([lj.mut3(H)]), h0[:1])  # a MUT's state is a GRU's
    assert isinstance(mut[0], lj.GRUState) and mut[0].hidden.shape == (B, H)
    mixed = (lj.LSTMState(jnp.zeros((B, H)), jnp.zeros((B, H))), lj.GRUState(jnp.zeros((B, H))))
    with pytest.raises(ValueError, match="mixes LSTM states"):
        carry_to_torch(mixed)
    with pytest.raises(ValueError, match="differ in shape"):
        carry_to_torch((lj.GRUState(jnp.zeros((B, H))), lj.GRUState(jnp.zeros((B, 4)))))


# --------------------------------------------------------------------------- no torch needed


def test_import_needs_no_torch():
    code = (
        "import sys\n"
        "import lstm_jax, lstm_jax.interop, lstm_jax.interop.torch as t\n"
        "assert 'torch' not in sys.modules, 'importing the interop module imported torch'\n"
        "sys.modules['torch'] = None  # now make `import torch` fail\n"
        "try:\n"
        "    t.from_torch(object())\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ImportError: lstm_jax.interop.torch needs PyTorch" in result.stdout
