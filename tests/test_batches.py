"""Host batch sources (lstm_jax.data.batches): every example once per epoch in a fresh order
from (seed, epoch), random access by step equal to reading in order, epochs wrapping; the
truncated-BPTT stream layout (contiguous rows across steps, targets one token ahead, resets
at epoch and document starts); every error message."""

import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.data import ArrayBatches, Batch, BatchSource, StreamBatches, TextChunk


def examples(n=10, t=4, i=3):
    """Rows that say which example they are: xs[r] holds r * 100 + ..., targets[r] = r."""
    xs = (np.arange(n)[:, None, None] * 100 + np.arange(t * i).reshape(1, t, i)).astype(np.float64)
    return Batch(xs, np.arange(n, dtype=np.int32), np.full(n, t, np.int32))


def rows(batch):
    """The example ids in a batch, after checking that its leaves agree row by row."""
    ids = np.asarray(batch.targets)
    np.testing.assert_array_equal(batch.xs[:, 0, 0], ids * 100)
    return ids


# ------------------------------------------------------------------------ ArrayBatches

def test_array_batches_every_example_once_per_epoch_in_a_fresh_order():
    source = ArrayBatches(examples(12), 4, seed=3)
    assert isinstance(source, BatchSource)
    assert (source.batch_size, source.steps_per_epoch) == (4, 3)
    orders = []
    for epoch in range(3):
        ids = np.concatenate([rows(b) for b in source.epoch(epoch)])
        assert sorted(ids) == list(range(12)), epoch
        orders.append(tuple(ids))
    assert len(set(orders)) == 3  # a different order each epoch
    batch = source[0]
    assert isinstance(batch, Batch) and batch.xs.shape == (4, 4, 3) and batch.xs.dtype == np.float64
    assert isinstance(batch.xs, np.ndarray) and batch.targets.dtype == np.int32


def test_array_batches_order_is_the_documented_permutation_and_wraps_by_epoch():
    source = ArrayBatches(examples(10), 3, seed=7)
    assert source.steps_per_epoch == 3  # 10 // 3; one example left out per epoch
    for step in range(12):
        epoch, k = divmod(step, 3)
        assert source.position(step) == (epoch, k)
        perm = np.random.default_rng([7, epoch]).permutation(10)
        np.testing.assert_array_equal(rows(source[step]), perm[3 * k:3 * k + 3])
        np.testing.assert_array_equal(source.permutation(epoch), perm)
    ids = np.concatenate([rows(b) for b in source.epoch(0)])
    assert len(set(ids)) == 9


def test_array_batches_random_access_equals_reading_in_order_and_a_seed_fixes_everything():
    data = examples(9)
    sequential = [ArrayBatches(data, 2, seed=1)[s] for s in range(20)]
    source = ArrayBatches(data, 2, seed=1)
    for step in np.random.default_rng(0).permutation(20):  # jumps across epochs, both ways
        np.testing.assert_array_equal(rows(source[int(step)]), rows(sequential[step]))
        np.testing.assert_array_equal(source[int(step)].xs, sequential[step].xs)
    other = ArrayBatches(data, 2, seed=2)
    assert any((rows(other[s]) != rows(sequential[s])).any() for s in range(4))


def test_array_batches_without_shuffle_keep_the_order_and_the_remainder_can_be_kept():
    source = ArrayBatches(examples(7), 3, shuffle=False)
    assert source.steps_per_epoch == 2
    np.testing.assert_array_equal(rows(source[0]), [0, 1, 2])
    np.testing.assert_array_equal(rows(source[3]), [3, 4, 5])  # epoch 1, batch 1
    every = ArrayBatches(examples(7), 3, shuffle=False, drop_remainder=False)
    assert every.steps_per_epoch == 3
    assert [list(rows(b)) for b in every.epoch(0)] == [[0, 1, 2], [3, 4, 5], [6]]
    shuffled = ArrayBatches(examples(7), 3, drop_remainder=False, seed=5)
    for epoch in range(2):
        ids = np.concatenate([rows(b) for b in shuffled.epoch(epoch)])
        assert sorted(ids) == list(range(7))


def test_array_batches_take_any_pytree_and_jax_arrays():
    source = ArrayBatches({"a": jnp.arange(6, dtype=jnp.int32), "b": np.ones((6, 2), np.float32)}, 2, seed=0)
    batch = source[1]
    assert set(batch) == {"a", "b"} and isinstance(batch["a"], np.ndarray) and batch["a"].dtype == np.int32
    single = ArrayBatches(np.arange(5), 5, shuffle=False)
    np.testing.assert_array_equal(single[4], np.arange(5))


def test_array_batches_errors_name_the_argument():
    data = examples(5)
    with pytest.raises(ValueError, match=r"`batch_size` \(6\) is larger than the number of examples N = 5"):
        ArrayBatches(data, 6)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int, got 0"):
        ArrayBatches(data, 0)
    with pytest.raises(ValueError, match=r"`arrays` must all have the same leading size N .* \[\(5, 4, 3\), \(4,\)"):
        ArrayBatches(Batch(data.xs, data.targets[:4], data.lengths), 2)
    with pytest.raises(ValueError, match="`arrays` must all have the same leading size"):
        ArrayBatches((np.arange(3), np.float64(1.0)), 2)
    with pytest.raises(ValueError, match="`arrays` must hold at least one array"):
        ArrayBatches({}, 2)
    with pytest.raises(ValueError, match="`seed` must be a non-negative int, got -1"):
        ArrayBatches(data, 2, seed=-1)
    with pytest.raises(TypeError, match="`shuffle` must be a bool, got 1"):
        ArrayBatches(data, 2, shuffle=1)
    source = ArrayBatches(data, 2)
    with pytest.raises(ValueError, match="`step` must be >= 0, got -1"):
        source[-1]
    with pytest.raises(TypeError, match="`step` must be an int, got 1.0"):
        source[1.0]
    with pytest.raises(ValueError, match="`epoch` must be >= 0, got -2"):
        source.permutation(-2)
    with pytest.raises(TypeError, match=r"read by step, `source\[step\]`.*`source.epoch\(e\)`"):
        iter(source)


# ----------------------------------------------------------------------- StreamBatches

def test_stream_batches_match_the_documented_diagram():
    source = StreamBatches(np.arange(25), 3, 3)
    assert isinstance(source, BatchSource)
    assert (source.batch_size, source.chunk_length, source.stream_length, source.steps_per_epoch) == (3, 3, 8, 2)
    chunk = source[1]
    assert isinstance(chunk, TextChunk)
    np.testing.assert_array_equal(chunk.inputs, [[3, 4, 5], [11, 12, 13], [19, 20, 21]])
    np.testing.assert_array_equal(chunk.targets, [[4, 5, 6], [12, 13, 14], [20, 21, 22]])
    np.testing.assert_array_equal(source[0].inputs, [[0, 1, 2], [8, 9, 10], [16, 17, 18]])
    assert chunk.inputs.dtype == chunk.targets.dtype == np.int32 and chunk.resets.dtype == np.bool_
    assert chunk.inputs.shape == chunk.targets.shape == chunk.resets.shape == (3, 3)
    assert not chunk.resets.any()
    np.testing.assert_array_equal(source[0].resets, [[True, False, False]] * 3)


def test_stream_rows_are_contiguous_across_steps_and_targets_are_the_next_tokens():
    tokens = np.random.default_rng(0).integers(0, 50, 1000).astype(np.int64)
    B, L = 4, 7
    source = StreamBatches(jnp.asarray(tokens, jnp.int32), B, L)
    S = (1000 - 1) // B
    assert (source.stream_length, source.steps_per_epoch) == (S, S // L)
    chunks = list(source.epoch(0))
    assert len(chunks) == S // L
    for k, chunk in enumerate(chunks):
        for b in range(B):
            start = b * S + k * L
            np.testing.assert_array_equal(chunk.inputs[b], tokens[start:start + L])
            np.testing.assert_array_equal(chunk.targets[b], tokens[start + 1:start + L + 1])
        np.testing.assert_array_equal(chunk.targets[:, :-1], chunk.inputs[:, 1:])
        if k + 1 < len(chunks):  # row b of step k + 1 goes on where row b of step k stopped
            np.testing.assert_array_equal(chunks[k + 1].inputs[:, 0], chunk.targets[:, -1])
    for step in (0, 5, S // L - 1):  # epochs wrap around: every epoch reads the same chunks
        for a, b in zip(source[step + 2 * source.steps_per_epoch], source[step]):
            np.testing.assert_array_equal(a, b)


def test_stream_resets_at_epoch_starts_and_document_starts_only():
    N, B, L = 61, 3, 4  # S = 20, 5 steps per epoch
    starts = np.zeros(N, bool)
    starts[[0, 7, 20, 33, 45, 60]] = True  # 20: also stream 1's start; 60: past the streams (B * S = 60)
    source = StreamBatches(np.arange(N), B, L, document_starts=starts)
    S = source.stream_length
    for step in range(2 * source.steps_per_epoch):
        chunk = source[step]
        k = step % source.steps_per_epoch
        positions = chunk.inputs  # token index = token value here
        expected = starts[positions] | ((k == 0) & (np.arange(L) == 0))[None, :]
        np.testing.assert_array_equal(chunk.resets, expected, err_msg=f"step {step}")
    assert source[0].resets[:, 0].all() and source[source.steps_per_epoch].resets[:, 0].all()
    assert source[1].resets[0, 3] and source[1].inputs[0, 3] == 7  # a document starting mid-chunk
    assert S == 20


def test_stream_batches_errors_name_the_argument():
    with pytest.raises(TypeError, match="`tokens` must be integer token ids, got dtype float64"):
        StreamBatches(np.zeros(10), 2, 2)
    with pytest.raises(ValueError, match=r"`tokens` must be one sequence \[N\], got shape \(2, 5\)"):
        StreamBatches(np.zeros((2, 5), np.int32), 2, 2)
    with pytest.raises(ValueError, match=r"`tokens` must lie in \[0, 2\*\*31\), got values in \[-1, 3\]"):
        StreamBatches(np.array([-1, 3, 2, 1]), 1, 1)
    with pytest.raises(ValueError, match=r"`batch_size` \(5\) is too large for 5 tokens.*N >= B \+ 1"):
        StreamBatches(np.arange(5), 5, 1)
    with pytest.raises(ValueError, match=r"`chunk_length` \(4\) is longer than a stream: 10 tokens in 3 streams "
                                         r"give S = \(N - 1\) // B = 3 tokens each"):
        StreamBatches(np.arange(10), 3, 4)
    with pytest.raises(ValueError, match=r"`document_starts` must be a bool array of shape \[N\] = \(10,\) like "
                                         r"`tokens`, got bool \(9,\)"):
        StreamBatches(np.arange(10), 3, 3, document_starts=np.zeros(9, bool))
    with pytest.raises(ValueError, match=r"`document_starts` must be a bool array .* got int64 \(10,\)"):
        StreamBatches(np.arange(10), 3, 3, document_starts=np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="`chunk_length` must be a positive int, got 0"):
        StreamBatches(np.arange(10), 3, 0)
    with pytest.raises(ValueError, match="`step` must be >= 0, got -1"):
        StreamBatches(np.arange(10), 3, 3)[-1]
