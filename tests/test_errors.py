"""Every mistake a user can make gets an exception whose message names the argument (in
backticks) and says what was expected and what was got.

One table of cases: each is a thunk, the exception type and the message fragments that must
appear in order. Cases marked xfail are library bugs (a misleading or missing message),
reported with a fix; they turn into failures once fixed, so the mark gets removed.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax import initializers

F64, F32 = jnp.float64, jnp.float32
KEY = jax.random.key(0)
I, T, B, H = 3, 5, 2, 4

CELL = lj.lstm(H)
PARAMS = CELL.init(KEY, I, dtype=F64)
XS = jnp.ones((B, T, I), F64)
CARRY = CELL.init_carry(PARAMS, (B,))
FGR = lj.greff_variant("FGR", H)
FGR_PARAMS = FGR.init(KEY, I, dtype=F64)
GRU_PARAMS = lj.gru(H).init(KEY, I, dtype=F64)
TWO = lj.stack([lj.lstm(H), lj.gru(H)])
TWO_PARAMS = TWO.init(KEY, I, dtype=F64)
BI = lj.bidirectional(lj.lstm(H), lj.lstm(H))
CONSTRUCTORS = {"rnn": lj.rnn, "lstm": lj.lstm, "gru": lj.gru, "mut1": lj.mut1, "mut2": lj.mut2,
                "mut3": lj.mut3, "greff_variant": lambda h: lj.greff_variant("V", h)}


def unroll(xs=XS, carry=None, **kw):
    return lj.unroll(CELL, PARAMS, xs, carry, **kw)


def lengths(*values, dtype=jnp.int32):
    return jnp.array(values, dtype)


def case(id, thunk, error, *fragments, bug=None):
    marks = [pytest.mark.xfail(reason=bug, strict=True)] if bug else []
    return pytest.param(thunk, error, fragments, id=id, marks=marks)


CASES = [
    # ------------------------------------------------------------------------ unroll: xs
    case("xs_rank", lambda: unroll(jnp.ones((I,), F64)), ValueError,
         "`xs` must have shape [..., T, I] (at least 2 axes), got shape (3,)."),
    case("xs_rank_time_major", lambda: unroll(jnp.ones((I,), F64), time_major=True), ValueError,
         "`xs` must have shape [T, ..., I] (at least 2 axes), got shape (3,)."),
    case("xs_features_time_major", lambda: unroll(jnp.ones((T, B, 4), F64), time_major=True), ValueError,
         "`xs` must have shape", "with last axis 3 (the cell's input size), got shape (5, 2, 4)."),
    case("xs_features", lambda: unroll(jnp.ones((B, T, 4), F64)), ValueError,
         "`xs` must have shape", "with last axis 3 (the cell's input size), got shape (2, 5, 4)."),
    case("xs_dtype", lambda: unroll(XS.astype(F32)), TypeError,
         "`xs` has dtype float32 but the parameters are float64", "xs.astype(jnp.float64)"),
    case("xs_int_dtype", lambda: unroll(jnp.ones((B, T, I), jnp.int32)), TypeError,
         "`xs` has dtype int32 but the parameters are float64"),
    case("xs_dtype_through_stack", lambda: TWO.apply(TWO_PARAMS, XS.astype(F32)), TypeError,
         "`xs` has dtype float32 but the parameters are float64"),
    # --------------------------------------------------------------------- unroll: carry
    case("carry_structure", lambda: unroll(carry=(CARRY.hidden, CARRY.cell)), TypeError,
         "`carry` must be LSTMState for `cell.init_carry(params, (2,))` of lstm(4), got a tuple of length 2."),
    case("carry_missing_gates_FGR",
         lambda: lj.unroll(FGR, FGR_PARAMS, XS, lj.LSTMState(CARRY.hidden, CARRY.cell)), ValueError,
         "`carry.gates` is missing: `cell.init_carry(params, (2,))` of lstm(4, peephole=True, "
         "full_gate_recurrence=True) has it (shape (2, 12))."),
    case("carry_shape_wrong_batch", lambda: unroll(carry=CELL.init_carry(PARAMS, (3,))), ValueError,
         "`carry.hidden` must have shape (2, 4) for batch shape (2,)", "got (3, 4)."),
    case("carry_shape_unbatched_xs", lambda: unroll(XS[0], carry=CARRY), ValueError,
         "`carry.hidden` must have shape (4,) (`cell.init_carry(params, ())` of lstm(4)), got (2, 4)."),
    case("carry_dtype", lambda: unroll(carry=jax.tree_util.tree_map(lambda a: a.astype(F32), CARRY)), TypeError,
         "`carry.hidden` must have dtype float64", "got float32."),
    # ------------------------------------------------------------------- unroll: lengths
    case("lengths_float", lambda: unroll(lengths=lengths(1, 2, dtype=F64)), TypeError,
         "`lengths` must be an integer array, got dtype float64."),
    case("lengths_bool", lambda: unroll(lengths=jnp.array([True, False])), TypeError,
         "`lengths` must be an integer array, got dtype bool."),
    case("lengths_float_list", lambda: unroll(lengths=[1.5, 2.0]), TypeError,
         "`lengths` must be an integer array, got dtype float64."),
    case("lengths_shape", lambda: unroll(lengths=lengths(1, 2, 3)), ValueError,
         "`lengths` must have shape (2,) (the batch shape of `xs`), got (3,)."),
    case("lengths_shape_time_major", lambda: unroll(jnp.swapaxes(XS, 0, 1), time_major=True, lengths=lengths(1)),
         ValueError, "`lengths` must have shape (2,) (the batch shape of `xs`), got (1,)."),
    case("lengths_negative", lambda: unroll(lengths=lengths(-1, 2)), ValueError,
         "`lengths` must lie in [0, 5] (T, the number of steps in `xs`), got values in [-1, 2]."),
    case("lengths_past_T", lambda: unroll(lengths=lengths(2, 6)), ValueError,
         "`lengths` must lie in [0, 5] (T, the number of steps in `xs`), got values in [2, 6]."),
    case("params_of_another_cell", lambda: lj.unroll(lj.gru(H), PARAMS, XS), TypeError,
         "`params` must be GRUParams", "got LSTMParams"),
    case("params_of_another_size", lambda: lj.unroll(lj.lstm(H + 1), PARAMS, XS), ValueError,
         "`params.w_x` has shape (3, 16), but lstm(5) needs (3, 20) (for input size 3)."),
    case("init_carry_params_of_another_cell", lambda: lj.layer(lj.rnn(H)).init_carry(GRU_PARAMS), TypeError,
         "`params` must be RNNParams for rnn(4), got GRUParams."),
    case("init_carry_bad_batch_shape", lambda: CELL.init_carry(PARAMS, "2"), TypeError,
         "`batch_shape` must be an int or a tuple of ints"),
    # --------------------------------------------------------------------- constructors
    *[case(f"hidden_size_{v!r}_{n}", lambda f=f, v=v: f(v), ValueError, f"`hidden_size` must be a positive int, got {v!r}.")
      for n, f in CONSTRUCTORS.items() for v in (0, -3, 4.0, True)],
    case("proj_size_equal", lambda: lj.lstm(H, proj_size=H), ValueError,
         "`proj_size` must be smaller than `hidden_size` (4), got 4."),
    case("proj_size_larger", lambda: lj.lstm(H, proj_size=7), ValueError,
         "`proj_size` must be smaller than `hidden_size` (4), got 7."),
    case("proj_size_zero", lambda: lj.lstm(H, proj_size=0), ValueError, "`proj_size` must be a positive int, got 0."),
    case("coupled_without_input_gate", lambda: lj.lstm(H, coupled=True, input_gate=False), ValueError,
         "`coupled=True`", "needs `input_gate=True` and `forget_gate=True`."),
    case("coupled_without_forget_gate", lambda: lj.lstm(H, coupled=True, forget_gate=False), ValueError,
         "`coupled=True`", "needs `input_gate=True` and `forget_gate=True`."),
    case("FGR_without_sigmoid_gates",
         lambda: lj.lstm(H, input_gate=False, forget_gate=False, output_gate=False, full_gate_recurrence=True),
         ValueError, "`full_gate_recurrence=True` needs at least one sigmoid gate."),
    case("input_activation", lambda: lj.lstm(H, input_activation="gelu"), ValueError,
         "`input_activation` must be one of ('tanh', 'relu', 'sigmoid', 'identity'), got 'gelu'."),
    case("output_activation", lambda: lj.lstm(H, output_activation=None), ValueError,
         "`output_activation` must be one of ('tanh', 'relu', 'sigmoid', 'identity'), got None."),
    case("derivative_clip_zero", lambda: lj.lstm(H, derivative_clip=0.0), ValueError,
         "`derivative_clip` must be a positive number or None, got 0.0."),
    case("derivative_clip_negative", lambda: lj.lstm(H, derivative_clip=-1), ValueError,
         "`derivative_clip` must be a positive number or None, got -1."),
    case("cell_by_name_unknown", lambda: lj.cell_by_name("lstmm", H), ValueError,
         "unknown cell name 'lstmm'; choose from ['clockwork', 'gru', 'lstm', 'lstm_CIFG'"),
    case("cell_by_name_option", lambda: lj.cell_by_name("gru", H, derivative_clip=1.0), ValueError,
         "cell 'gru' does not take that option: gru() got an unexpected keyword argument 'derivative_clip'"),
    case("cell_by_name_preset", lambda: lj.cell_by_name("rnn_relu", H, activation="tanh"), ValueError,
         "cell 'rnn_relu' fixes ['activation'] itself; use its base cell to choose them."),
    case("lstm_layer_norm_params_missing", lambda: lj.unroll(lj.lstm(H, layer_norm=True), PARAMS, XS), ValueError,
         "`params.ln_x_gain` is missing: lstm(4, layer_norm=True) has it (shape (16,))."),
    case("derivative_clip_string", lambda: lj.lstm(H, derivative_clip="1"), ValueError,
         "`derivative_clip` must be a positive number or None, got '1'."),
    case("rnn_activation", lambda: lj.rnn(H, activation="sigmoid"), ValueError,
         "`activation` must be one of ('tanh', 'relu'), got 'sigmoid'."),
    case("greff_variant_name", lambda: lj.greff_variant("LSTM", H), ValueError,
         "`name` must be one of ('V', 'NIG', 'NFG', 'NOG', 'NIAF', 'NOAF', 'NP', 'CIFG', 'FGR'), got 'LSTM'."),
    case("lstm_unknown_keyword", lambda: lj.lstm(H, peepholes=True), TypeError,
         "unexpected keyword argument 'peepholes'"),
    case("greff_unknown_keyword", lambda: lj.greff_variant("V", H, peepholes=True), TypeError,
         "unexpected keyword argument 'peepholes'"),
    case("gru_unknown_keyword", lambda: lj.gru(H, reset_before=True), TypeError,
         "unexpected keyword argument 'reset_before'"),
    # -------------------------------------------------------------------------------- init
    case("mut1_input_size", lambda: lj.mut1(H).init(KEY, I), ValueError,
         "mut1", "`input_size` must equal `hidden_size` (4), got 3."),
    case("mut2_input_size", lambda: lj.mut2(H).init(KEY, I), ValueError,
         "mut2", "`input_size` must equal `hidden_size` (4), got 3."),
    *[case(f"init_dtype_int_{n}", lambda f=f: f(H).init(KEY, H, dtype=jnp.int32), TypeError,
           "`dtype` must be a floating dtype (float32, bfloat16, float64...), got int32.")
      for n, f in CONSTRUCTORS.items()],
    case("init_dtype_through_stack", lambda: TWO.init(KEY, I, dtype=jnp.complex64), TypeError,
         "`dtype` must be a floating dtype", "got complex64."),
    case("init_input_size_zero", lambda: CELL.init(KEY, 0), ValueError, "`input_size` must be a positive int, got 0."),
    case("stack_init_input_size", lambda: TWO.init(KEY, 2.5), ValueError, "`input_size` must be a positive int, got 2.5."),
    case("orthogonal_3d", lambda: initializers.orthogonal()(KEY, (3, 3, 3), F32), ValueError,
         "orthogonal init needs a 2-D `shape`, got (3, 3, 3)."),
    case("orthogonal_1d", lambda: initializers.orthogonal()(KEY, (3,), F32), ValueError,
         "orthogonal init needs a 2-D `shape`, got (3,)."),
    # ------------------------------------------------------------------------------ layer
    case("layer_of_a_string", lambda: lj.layer("lstm"), TypeError,
         "`cell` must be a lstm_jax Cell (e.g. lstm_jax.lstm(64)), got str."),
    case("layer_of_a_layer", lambda: lj.layer(lj.layer(CELL)), TypeError,
         "`cell` is already a Layer (layer(lstm(4))); pass a Cell such as lstm_jax.lstm(64)."),
    # ------------------------------------------------------------------------------ stack
    case("stack_empty", lambda: lj.stack([]), ValueError, "`layers` must contain at least one cell or layer."),
    case("stack_non_layer_entry", lambda: lj.stack([CELL, "gru"]), TypeError,
         "`layers[1]` must be a Cell or a Layer, got str."),
    case("stack_of_a_bare_cell", lambda: lj.stack(CELL), TypeError, "`layers` must be a list of cells or layers"),
    case("dropout_rate_one", lambda: lj.stack([CELL, CELL], dropout_rate=1.0), ValueError,
         "`dropout_rate` must lie in [0, 1), got 1.0."),
    case("dropout_rate_negative", lambda: lj.stack([CELL, CELL], dropout_rate=-0.1), ValueError,
         "`dropout_rate` must lie in [0, 1), got -0.1."),
    case("dropout_rate_string", lambda: lj.stack([CELL, CELL], dropout_rate="0.2"), ValueError,
         "`dropout_rate` must lie in [0, 1), got '0.2'."),
    case("stack_params_length", lambda: TWO.apply(TWO_PARAMS[:1], XS), ValueError,
         "`params` must be a tuple of 2 per-layer parameters (one per stacked layer), got a tuple of length 1."),
    case("stack_params_of_one_layer", lambda: TWO.apply(PARAMS, XS), ValueError,
         "`params` must be a tuple of 2 per-layer parameters", "got a LSTMParams of length 12."),
    case("stack_params_not_a_tuple", lambda: TWO.apply({"a": 1}, XS), ValueError,
         "`params` must be a tuple of 2 per-layer parameters", "got dict."),
    case("stack_init_carry_params", lambda: TWO.init_carry(TWO_PARAMS[:1], (B,)), ValueError,
         "`params` must be a tuple of 2 per-layer parameters"),
    case("stack_carry_length", lambda: TWO.apply(TWO_PARAMS, XS, (CARRY,)), ValueError,
         "`carry` must be a tuple of 2 per-layer carries (one per stacked layer), got a tuple of length 1."),
    case("stack_mixed_time_major", lambda: lj.stack([lj.layer(CELL, time_major=True), CELL]), ValueError,
         "`layers` must all share one `time_major` setting."),
    # ---------------------------------------------------------------------- bidirectional
    case("bidirectional_merge", lambda: lj.bidirectional(CELL, CELL, merge="max"), ValueError,
         "`merge` must be one of ('concat', 'sum', 'mean', 'mul'), got 'max'."),
    *[case(f"bidirectional_{m}_sizes", lambda m=m: lj.bidirectional(lj.lstm(4), lj.gru(3), merge=m), ValueError,
           f"merge='{m}' needs equal output sizes, got 4 and 3.") for m in ("sum", "mean", "mul")],
    case("bidirectional_proj_sizes", lambda: lj.bidirectional(lj.lstm(4, proj_size=2), lj.lstm(4), merge="sum"),
         ValueError, "merge='sum' needs equal output sizes, got 2 and 4."),
    case("bidirectional_bwd_not_reversed", lambda: lj.bidirectional(CELL, lj.layer(CELL)), ValueError,
         "`fwd` must read forwards and `bwd` backwards: pass cells, or `layer(cell)` and `layer(cell, reverse=True)`."),
    case("bidirectional_fwd_reversed", lambda: lj.bidirectional(lj.layer(CELL, reverse=True), CELL), ValueError,
         "`fwd` must read forwards and `bwd` backwards"),
    case("bidirectional_mixed_time_major",
         lambda: lj.bidirectional(lj.layer(CELL, time_major=True), lj.layer(CELL, reverse=True)), ValueError,
         "`fwd` and `bwd` must share one `time_major` setting."),
    case("bidirectional_fwd_type", lambda: lj.bidirectional("lstm", CELL), TypeError,
         "`fwd` must be a Cell or a Layer, got str."),
    case("bidirectional_bwd_type", lambda: lj.bidirectional(CELL, None), TypeError,
         "`bwd` must be a Cell or a Layer, got NoneType."),
    case("bidirectional_params_type", lambda: BI.apply((PARAMS, PARAMS), XS), TypeError,
         "`params` must be BidirectionalParams (from this layer's init), got tuple."),
]


@pytest.mark.parametrize("thunk, error, fragments", CASES)
def test_error_message(thunk, error, fragments):
    with pytest.raises(error, match=".*".join(map(re.escape, fragments))):
        thunk()


assert_close = helpers.assert_trees_close
def test_lengths_may_be_a_python_list():
    ys, carry = unroll(lengths=[T, 2])
    ys_ref, carry_ref = unroll(lengths=lengths(T, 2))
    assert_close((ys, carry), (ys_ref, carry_ref))


def test_lengths_are_not_value_checked_under_jit_and_act_as_T():
    """Documented: under jit the values are tracers, so out-of-range lengths cannot raise."""
    ys, carry = jax.jit(lambda n: unroll(lengths=n))(lengths(T + 3, T))
    ys_ref, carry_ref = unroll()
    assert_close((ys, carry), (ys_ref, carry_ref))
