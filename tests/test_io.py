"""Saving for inference: every kind of model round-trips through one file (equal model, the
exact params tree, dtypes kept); a fresh process loads it with the library alone and gives
identical outputs; the exported generation step runs in a process with only jax and numpy and
gives identical logits (resets included); what cannot be saved or loaded is refused, named."""

import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax import initializers as inits
from lstm_jax.cells.registry import CELL_CONSTRUCTORS
from lstm_jax.io import export_step, load, save
from lstm_jax.models import generate, language_model, readout

ROOT = pathlib.Path(__file__).parent.parent
V = 7


def run_python(code, tmp_path):
    """``code`` in a fresh interpreter with JAX's defaults (not this suite's strict settings)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                                                            "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def random_params(init, seed=0, scale=0.5):
    """Params shaped like ``init()``'s, drawn N(0, scale^2) by NumPy: no initialiser runs (their
    QR decompositions compile per shape), and zero-initialised biases and peepholes matter."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), jax.eval_shape(init))


def assert_same(a, b):
    """Equal trees: structure, NamedTuple types, dtypes and every value bit for bit."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


MODELS = {
    **{f"cell_{name}": (lambda name=name: CELL_CONSTRUCTORS[name](4)) for name in
       ("rnn_relu", "lstm_FGR", "gru", "mut3", "min_lstm", "slstm", "clockwork")},
    "lstm_options": lambda: lj.lstm(6, proj_size=3, layer_norm=True, derivative_clip=1.0,
                                    kernel_init=inits.orthogonal(0.5), recurrent_init=inits.lecun_normal(),
                                    bias_init=inits.constant(0.1)),
    "depth_gated": lambda: lj.depth_gated_lstm(4, num_layers=2, dropout_rate=0.1),
    "grid": lambda: lj.grid_lstm(4, depth=2, depth_lstm=False),
    "attention_decoder": lambda: lj.attention_decoder(4, lj.multiplicative_attention("general", scale=True),
                                                      memory_size=5),
    "layer_options": lambda: lj.layer(lj.gru(4), unroll=True, impl="scan", remat_chunk=2, learn_initial_carry=True),
    "bidirectional_stack": lambda: lj.stack([lj.bidirectional(lj.lstm(3), lj.gru(3), merge="sum"),
                                             lj.layer(lj.mlstm(4, num_heads=2), reverse=True)], dropout_rate=0.2),
    "readout": lambda: readout(lj.stack([lj.rnn(4), lj.lstm(3)]), 2, at="every"),
    "lm_tied": lambda: language_model(lj.stack([lj.lstm(5), lj.min_gru(4)]), V, tie_embeddings=True),
    "lm_untied": lambda: language_model(lj.layer(lj.clockwork(4, periods=[1, 2]), learn_initial_carry=True), V,
                                        embed_size=3, dropout_rate=0.3),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_gives_the_equal_model_and_the_exact_params(name, tmp_path):
    model = MODELS[name]()
    key = jax.random.key(0)
    init = (lambda: model.init(key, dtype=jnp.float64)) if name.startswith("lm") else \
        (lambda: model.init(key, 5, dtype=jnp.float64))
    params = random_params(init)
    path = save(tmp_path / "model.npz", model, params)
    assert path == tmp_path / "model.npz" and [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    loaded, loaded_params = load(path)
    assert loaded == model and hash(loaded) == hash(model) and repr(loaded) == repr(model)
    assert_same(loaded_params, params)


def test_bfloat16_params_round_trip_exactly(tmp_path):
    lm = MODELS["lm_untied"]()
    params = random_params(lambda: lm.init(jax.random.key(1), dtype=jnp.bfloat16))
    loaded, loaded_params = load(save(tmp_path / "bf16", lm, params))
    assert loaded == lm and loaded_params.embed.dtype == jnp.bfloat16
    assert_same(loaded_params, params)


def test_the_file_is_an_npz_with_json_and_arrays_by_key_path(tmp_path):
    lm = MODELS["lm_tied"]()
    save(tmp_path / "lm.npz", lm, random_params(lambda: lm.init(jax.random.key(0))))
    with np.load(tmp_path / "lm.npz", allow_pickle=False) as archive:
        meta = json.loads(str(archive["__lstm_jax__"]))
        names = sorted(archive.files)
    assert (meta["format"], meta["version"], meta["kind"], meta["dtype"]) == ("lstm_jax.save", 1, "language_model",
                                                                              "float32")
    assert meta["repr"] == repr(lm) and meta["model"]["build"]["type"] == "LanguageModelConfig"
    assert {"params.embed", "params.b_out", "params.body[0].w_x", "params.body[0].w_h"} < set(names)
    assert meta["arrays"]["params.embed"] == {"dtype": "float32", "shape": [V, 4]}


def test_a_fresh_process_loads_the_model_and_gives_identical_outputs(tmp_path):
    """The saved LM in a new interpreter (JAX defaults, no training code imported): the same
    logits, loss and sampled generation, bit for bit."""
    lm = language_model(lj.stack([lj.lstm(8), lj.gru(6)], dropout_rate=0.1), V, embed_size=4, dropout_rate=0.2)
    params = random_params(lambda: lm.init(jax.random.key(0)), 0, 0.3)
    save(tmp_path / "lm.npz", lm, params)
    tokens = np.random.default_rng(1).integers(0, V, (2, 9)).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    run_python("""
        import sys
        import jax, numpy as np
        from lstm_jax.io import load
        from lstm_jax.models import generate
        lm, params = load("lm.npz")
        tokens = np.load("tokens.npy")
        outputs = jax.jit(lambda p, t: (lm.apply(p, t)[0], lm.loss(p, t[:, :-1], t[:, 1:])[0]))
        logits, nats = outputs(params, tokens)
        sampled, _ = generate(lm, params, jax.random.key(1), tokens[:, :3], 6, temperature=0.8, top_p=0.9)
        np.savez("out.npz", logits=logits, nats=nats, sampled=sampled)
        assert not any(m.startswith(("lstm_jax.train", "optax", "orbax")) for m in sys.modules), "training code"
    """, tmp_path)
    out = np.load(tmp_path / "out.npz")
    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(False):  # the child's settings
        outputs = jax.jit(lambda p, t: (lm.apply(p, t)[0], lm.loss(p, t[:, :-1], t[:, 1:])[0]))
        logits, nats = outputs(params, tokens)
        np.testing.assert_array_equal(out["logits"], logits)
        np.testing.assert_array_equal(out["nats"], nats)
        np.testing.assert_array_equal(out["sampled"], generate(lm, params, jax.random.key(1), tokens[:, :3], 6,
                                                               temperature=0.8, top_p=0.9)[0])


def test_the_exported_step_runs_without_the_library_and_gives_identical_logits(tmp_path):
    """A process that imports only jax and numpy deserialises the artifact and steps it: the
    first call resets every row (to the learned initial carry), a later one resets row 1; its
    logits equal lm.step's (jitted, with the same resets) bit for bit."""
    body = lj.stack([lj.lstm(6), lj.layer(lj.gru(5), learn_initial_carry=True)])
    lm = language_model(body, V, embed_size=4)
    params = random_params(lambda: lm.init(jax.random.key(0)), 2, 0.3)
    B, steps = 3, 5
    exported = export_step(tmp_path / "step.bin", lm, params, B)
    assert [a.shape for a in exported.in_avals[:2]] == [(B,), (B,)] and exported.out_avals[0].shape == (B, V)
    tokens = np.random.default_rng(3).integers(0, V, (steps, B)).astype(np.int32)
    resets = np.zeros((steps, B), bool)
    resets[0] = True
    resets[3, 1] = True
    np.savez(tmp_path / "inputs.npz", tokens=tokens, resets=resets)
    run_python("""
        import sys
        import jax, numpy as np
        step = jax.export.deserialize(open("step.bin", "rb").read())
        inputs = np.load("inputs.npz")
        carry = tuple(np.full(a.shape, 7, a.dtype) for a in step.in_avals[2:])  # overwritten by the reset
        logits = []
        for token, reset in zip(inputs["tokens"], inputs["resets"]):
            out, carry = step.call(token, reset, carry)
            logits.append(out)
        np.save("logits.npy", np.stack(logits))
        assert not any(m.startswith("lstm_jax") for m in sys.modules)
    """, tmp_path)
    got = np.load(tmp_path / "logits.npy")

    @jax.jit
    def stepped(params, carry, token, reset):
        carry = lj.ops.tree_where(reset, lm.init_carry(params, (B,)), carry)
        return lm.step(params, carry, token)

    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(False):
        carry = lm.init_carry(params, (B,))
        for t in range(steps):
            carry, logits = stepped(params, carry, tokens[t], resets[t])
            np.testing.assert_array_equal(got[t], logits)


def test_what_cannot_be_saved_is_refused_by_name(tmp_path):
    fn = jax.nn.initializers.zeros
    lm = language_model(lj.stack([lj.lstm(4), lj.gru(4, recurrent_init=fn)]), V)
    with pytest.raises(TypeError, match=r"cannot save `model.body.layers\[1\].cell.recurrent_init` = <function "
                                        r"zeros.*>: a function cannot be written to a file; use None \(the "
                                        r"default\) or an initialiser from lstm_jax.initializers"):
        save(tmp_path / "x", lm, random_params(lambda: lm.init(jax.random.key(0))))
    with pytest.raises(TypeError, match=r"`model` must be a LanguageModel, a readout Model, a Layer or a Cell, got "
                                        r"Seq2Seq"):
        save(tmp_path / "x", lj.seq2seq(5), None)
    lm = language_model(lj.lstm(4), V)
    params = random_params(lambda: lm.init(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"`params.body.w_x` must have shape \(4, 16\)"):
        save(tmp_path / "x", lm, params._replace(body=random_params(lambda: lj.lstm(4).init(jax.random.key(0), 3))))
    with pytest.raises(TypeError, match=r"`params.b_out` must have dtype float32"):
        save(tmp_path / "x", lm, params._replace(b_out=params.b_out.astype(jnp.float64)))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_what_cannot_be_loaded_is_refused_by_name(tmp_path):
    lm = language_model(lj.lstm(4), V)
    path = save(tmp_path / "lm.npz", lm, random_params(lambda: lm.init(jax.random.key(0))))
    with np.load(path, allow_pickle=False) as archive:
        meta, arrays = json.loads(str(archive["__lstm_jax__"])), {k: archive[k] for k in archive.files}

    def rewrite(name, meta_changes=None, drop=(), add=None, model=None):
        m = {**meta, **(meta_changes or {})}
        if model is not None:
            m["model"] = model
        a = {k: v for k, v in arrays.items() if k not in drop and k != "__lstm_jax__"}
        np.savez(tmp_path / name, __lstm_jax__=np.array(json.dumps(m)), **a, **(add or {}))
        return tmp_path / name

    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"is not a file written by lstm_jax.save \(no '__lstm_jax__' entry\)"):
        load(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match=r"has format 'lstm_jax.save' version 2; this lstm_jax reads "
                                         r"'lstm_jax.save' version 1"):
        load(rewrite("v2.npz", {"version": 2}))
    unknown = json.loads(json.dumps(meta["model"]).replace('"LSTMConfig"', '"WarpConfig"'))
    with pytest.raises(ValueError, match=r"model.body.cell: the file needs the config class 'WarpConfig', which "
                                         r"this process does not know; import the module that defines it"):
        load(rewrite("unknown.npz", model=unknown))
    with pytest.raises(ValueError, match=r"lacks `params.b_out` \(\(7,\) float32\) of language_model"):
        load(rewrite("missing.npz", drop=("params.b_out",)))
    with pytest.raises(ValueError, match=r"holds arrays that language_model\(layer\(lstm\(4\)\), 7, embed_size=4\) "
                                         r"does not have: \['params.extra'\]"):
        load(rewrite("extra.npz", add={"params.extra": np.zeros(2)}))
    bad = dict(meta["arrays"], **{"params.b_out": {"dtype": "float32", "shape": [6]}})
    with pytest.raises(ValueError, match=r"`params.b_out` in .* is \(6,\) float32; language_model.* needs \(7,\) "
                                         r"float32"):
        load(rewrite("shape.npz", {"arrays": bad}, drop=("params.b_out",),
                     add={"params.b_out": np.zeros(6, np.float32)}))


def test_export_step_errors():
    lm = language_model(lj.lstm(4), V)
    with pytest.raises(TypeError, match=r"`lm` must be a LanguageModel \(from lstm_jax.language_model\), got Cell"):
        export_step("x", lj.lstm(4), None, 2)
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int, got 0"):
        export_step("x", lm, random_params(lambda: lm.init(jax.random.key(0))), 0)
