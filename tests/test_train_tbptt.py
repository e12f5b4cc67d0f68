"""Stateful training (truncated BPTT) in ``fit``: with the chunk equal to the whole sequence
it is full BPTT step for step; with several chunks the carry handed on is the carry of the
concatenated chunks, restarted at each epoch; the loss_fn convention and the carry's shape
are checked with clear messages."""

import jax
import pytest

import helpers  # tests/helpers.py
from lstm_jax.train import TrainConfig, fit
from train_problems import StreamSource, stream_model

B, L = 4, 5


def test_one_chunk_per_epoch_equals_full_bptt():
    """Every step is a whole sequence whose first step resets the carry: the carried state is
    never used, so stateful training must equal ordinary (full-BPTT) training bit for bit."""
    net, params, stateful_loss, full_loss = stream_model()
    source = StreamSource(B, L, chunks=1)
    config = TrainConfig(steps=4, learning_rate=1e-2, log_every=1)
    full = fit(full_loss, params, source, config, progress=False)
    tbptt = fit(stateful_loss, params, source, config, carry=net.init_carry(params.body, (B,)), progress=False)
    helpers.assert_trees_close(tbptt.params, full.params, rtol=0, atol=0)
    assert [h["loss"] for h in tbptt.history] == [h["loss"] for h in full.history]
    assert [h["epoch"] for h in tbptt.history] == [1.0, 2.0, 3.0, 4.0]


def test_carry_handed_on_is_the_carry_of_the_concatenated_chunks(tmp_path):
    """With a zero gradient the parameters stay put, so the carry after k chunks must be the
    final carry of one pass over the k chunks joined; the next epoch starts afresh."""
    net, params, stateful_loss, _ = stream_model()
    zero = lambda p, b, k, c: (lambda loss, m, carry: (0.0 * loss, m, carry))(*stateful_loss(p, b, k, c))
    source = StreamSource(B, L, chunks=3)
    start = net.init_carry(params.body, (B,))
    config = lambda steps: TrainConfig(steps=steps, optimizer="sgd", learning_rate=0.1, log_every=1)

    two = fit(zero, params, source, config(2), carry=start, workdir=tmp_path, progress=False)
    xs, _ = source.streams(0)
    _, joined = net.apply(params.body, xs[:, :2 * L])
    helpers.assert_trees_close(two.carry, joined, rtol=1e-6, atol=1e-6)
    # resumed (the carry comes from the checkpoint) into the second epoch: chunk 0 resets it
    four = fit(zero, params, source, config(4), carry=start, workdir=tmp_path, resume=True, progress=False)
    assert four.start_step == 2
    helpers.assert_trees_close(four.params, params, rtol=0, atol=0)
    xs1, _ = source.streams(1)
    _, fresh = net.apply(params.body, xs1[:, :L])
    helpers.assert_trees_close(four.carry, fresh, rtol=1e-6, atol=1e-6)


def test_loss_fn_convention_and_carry_are_checked():
    net, params, stateful_loss, full_loss = stream_model()
    source = StreamSource(B, L, chunks=2)
    carry = net.init_carry(params.body, (B,))
    config = TrainConfig(steps=1)
    two = lambda p, b, k, c: stateful_loss(p, b, k, c)[::2]
    with pytest.raises(TypeError, match=r"with a `carry`, loss_fn\(params, batch, key, carry\) must return "
                                        r"\(loss, metrics, new_carry\) \(metrics may be \{\}\); it returned a "
                                        r"tuple of 2\."):
        fit(two, params, source, config, carry=carry, progress=False)
    with pytest.raises(TypeError, match=r"it returned a tuple of 3 \(a stateful loss_fn needs fit\(\.\.\., carry"):
        fit(lambda p, b, k: stateful_loss(p, b, k, carry), params, source, config, progress=False)
    grown = lambda p, b, k, c: (*stateful_loss(p, b, k, c)[:2], jax.tree.map(lambda x: x[:, :2], c))
    with pytest.raises(ValueError, match=r"new carry with the shapes and dtypes of the carry it was given: "
                                         r"hidden is \(4, 4\) float32 given, \(4, 2\) float32 returned"):
        fit(grown, params, source, config, carry=carry, progress=False)
    with pytest.raises(ValueError, match=r"every leaf of `carry` must have the global batch \(4\) on its leading "
                                         r"axis; hidden has shape \(3, 4\)"):
        fit(stateful_loss, params, source, config, carry=net.init_carry(params.body, (3,)), progress=False)
    del full_loss
