"""Polyphonic music (lstm_jax.data.music): the Bach chorales' piano rolls checked against the
scores as music21 reads them (the first chord, a held note, a unison, a passing eighth, a rest,
and every step of two chorales through music21's own chordify), the selection and split
pinned by their counts, the cache (written once, reused, rebuilt when stale), ``padded``,
``frame_nll`` against a float64 NumPy reference, and the error messages.

The chorales are parsed once per test run (about 20 s) into a temporary cache directory that
the test workers share."""

import fcntl
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.data import PianoRolls, bach_chorales, frame_nll, music, padded

needs_music21 = pytest.mark.skipif(importlib.util.find_spec("music21") is None,
                                   reason=f"the Bach chorales need music21: `{music.MUSIC21_INSTALL}`")


def key(name: str) -> int:
    """The piano-roll key of a pitch name (``"G4"``), through music21."""
    from music21 import pitch
    return pitch.Pitch(name).midi - 21


@pytest.fixture(scope="session")
def built(tmp_path_factory, worker_id):
    """The chorales loaded twice into one cache directory shared by the test workers (xdist's
    base temporary directory is theirs in common), under a lock, counting the builds of all
    workers in ``builds.txt``: the first worker parses, the others read its file."""
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # under xdist: this run's, shared by its workers
    cache = root / "music_cache"
    calls = []
    build = music._build_bach_chorales
    with open(root / "music_cache.lock", "w") as lock, pytest.MonkeyPatch.context() as mp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mp.setattr(music, "_build_bach_chorales", lambda: calls.append(1) or build())
        first = bach_chorales(cache_dir=cache)
        files_after_first = sorted(p.name for p in cache.iterdir())
        second = bach_chorales(cache_dir=cache)
        with open(root / "music_builds.txt", "a") as counter:
            counter.write("1\n" * len(calls))
    return first, second, cache, files_after_first, root / "music_builds.txt"


@pytest.fixture(scope="session")
def rolls(built):
    return built[0]


def roll_of(rolls: PianoRolls, chorale: str) -> np.ndarray:
    for split in music.SPLITS:
        if chorale in rolls.ids[split]:
            return getattr(rolls, split)[rolls.ids[split].index(chorale)]
    raise KeyError(chorale)


def parse(chorale: str):
    from music21 import corpus
    return corpus.parse(f"bach/{chorale}", forceSource=True)


# ---------------------------------------------------------------------- against music21

@needs_music21
def test_bwv269_notes_at_their_steps(rolls):
    roll = roll_of(rolls, "bwv269")
    assert roll.dtype == np.uint8 and roll.shape == (63, 88) and set(np.unique(roll)) == {0, 1}
    score = parse("bwv269")
    soprano, alto, tenor, bass = ([n for n in p.flatten().notesAndRests] for p in score.parts)
    # The first chord, read off the score: G major, G4 D4 B3 G2.
    first = sorted(p[0].pitch.nameWithOctave for p in (soprano, alto, tenor, bass))
    assert first == ["B3", "D4", "G2", "G4"]
    assert sorted(np.flatnonzero(roll[0])) == sorted(key(n) for n in first)
    # The soprano's second note, G4, is a half note at offset 1: on at steps 1 and 2.
    assert (float(soprano[1].offset), float(soprano[1].quarterLength), soprano[1].nameWithOctave) == (1.0, 2.0, "G4")
    assert roll[1, key("G4")] == roll[2, key("G4")] == 1
    # Step 2: that held G4, alto E4, the tenor's C4 (an eighth on the beat) and bass E3;
    # the tenor's B3 that follows on the off-beat (offset 2.5) sounds at no step.
    assert (float(tenor[3].offset), tenor[3].nameWithOctave) == (2.5, "B3")
    assert sorted(np.flatnonzero(roll[2])) == sorted(key(n) for n in ("G4", "E4", "C4", "E3"))
    # Step 5: the soprano's dotted quarter B4 (offset 4) is held; its eighth A4 at 5.5 is not seen.
    assert (float(soprano[4].offset), float(soprano[4].quarterLength), soprano[4].nameWithOctave) == (5.5, 0.5, "A4")
    assert roll[5, key("B4")] == 1 and roll[5, key("A4")] == 0
    # Step 4: tenor and bass both sing G3, one key: three keys on.
    assert tenor[5].nameWithOctave == bass[4].nameWithOctave == "G3" and tenor[5].offset == bass[4].offset == 4
    assert roll[4].sum() == 3


@needs_music21
def test_bwv433_rests_are_silent_steps_and_the_leading_rest_is_no_step(rolls):
    roll = roll_of(rolls, "bwv433")
    parts = [list(p.flatten().notesAndRests) for p in parse("bwv433").parts]
    # The score opens with a quarter rest in every voice (the upbeat bar written out in full):
    # step 0 is the first chord, at offset 1.
    assert all(p[0].isRest and p[0].offset == 0 and p[0].quarterLength == 1 for p in parts)
    assert sorted(np.flatnonzero(roll[0])) == sorted(p[1].pitch.midi - 21 for p in parts)
    # All four voices rest at offset 6 (after the first phrase's held chord): step 5 is silent.
    for p in parts:
        at6 = [n for n in p if n.offset == 6]
        assert len(at6) == 1 and at6[0].isRest
        held = next(n for n in p if n.offset == 4)
        assert held.quarterLength == 2 and roll[3:5, held.pitch.midi - 21].tolist() == [1, 1]
    assert roll[5].sum() == 0 and roll[4].sum() > 0 and roll[6].sum() > 0


@needs_music21
@pytest.mark.parametrize("chorale", ["bwv269", "bwv433"])
def test_every_step_matches_music21_chordify(rolls, chorale):
    # An independent path: music21 slices the score into chords at every onset of any voice;
    # the keys on at step t are the pitches of the slice sounding at offset first + t.
    score = parse(chorale)
    slices = list(score.chordify().flatten().notesAndRests)
    sounding = [s for s in slices if not s.isRest]
    start = int(min(s.offset for s in sounding))
    end = max(s.offset + s.quarterLength for s in sounding)
    roll = roll_of(rolls, chorale)
    assert len(roll) == int(np.ceil(end)) - start
    for t in range(len(roll)):
        at = [s for s in slices if s.offset <= start + t < s.offset + s.quarterLength]
        expected = sorted({p.midi - 21 for s in at if not s.isRest for p in s.pitches})
        assert sorted(np.flatnonzero(roll[t])) == expected, f"{chorale} step {t}"


# ----------------------------------------------------------------------- selection, split

@needs_music21
def test_split_is_fixed_disjoint_and_pinned(built):
    first, second, *_ = built
    assert first.ids == second.ids
    assert first.name == "bach_chorales"
    counts = {s: len(first.ids[s]) for s in music.SPLITS}
    assert counts == {"train": 198, "valid": 65, "test": 65}  # music21 10.5.1: 328 chorales, 60/20/20
    steps = {s: sum(len(r) for r in getattr(first, s)) for s in music.SPLITS}
    assert steps == {"train": 10706, "valid": 3393, "test": 3427}
    every = [c for s in music.SPLITS for c in first.ids[s]]
    assert len(set(every)) == len(every) == 328
    assert [len(getattr(first, s)) for s in music.SPLITS] == list(counts.values())
    # The rule: sorted by BWV number (natural order), index % 5 == 3 valid, == 4 test.
    ordered = sorted(every, key=music.natural_key)
    assert ordered[:6] == ["bwv2.6", "bwv3.6", "bwv4.8", "bwv5.7", "bwv6.6", "bwv9.7"]
    for split in music.SPLITS:
        assert first.ids[split] == [c for i, c in enumerate(ordered) if music.split_of(i) == split]
    assert first.ids["valid"][:3] == ["bwv5.7", "bwv13.6", "bwv20.11"]
    assert first.ids["test"][:3] == ["bwv6.6", "bwv14.5", "bwv24.6"]
    # Duplicates (up to transposition) go, the lower BWV number stays.
    assert {"bwv62.6", "bwv69.6", "bwv18.5-l"} <= set(every)
    assert not {"bwv274", "bwv69.6-a", "bwv18.5-w"} & set(every)
    # Only four-voice scores: bwv41.6 has trumpets and timpani.
    assert "bwv41.6" not in every
    for split in music.SPLITS:
        for r in getattr(first, split):
            assert r.dtype == np.uint8 and r.ndim == 2 and r.shape[1] == 88 and not r.flags.writeable
            assert r[0].any() and r[-1].any() and 1 <= r.sum(axis=1).max() <= 4
    assert "train=198 pieces/10,706 steps" in repr(first)


def test_natural_order_compares_numbers_as_numbers():
    ids = ["bwv153.1", "bwv10.7", "bwv248.12-2", "bwv2.6", "bwv18.5-w", "bwv18.5-l", "bwv248.5", "bwv69.6-a",
           "bwv69.6"]
    assert sorted(ids, key=music.natural_key) == ["bwv2.6", "bwv10.7", "bwv18.5-l", "bwv18.5-w", "bwv69.6",
                                                  "bwv69.6-a", "bwv153.1", "bwv248.5", "bwv248.12-2"]


# ------------------------------------------------------------------------------- cache

@needs_music21
def test_cache_is_written_once_and_reused(built):
    first, second, cache, files, builds = built
    assert builds.read_text() == "1\n"  # one build in all, by whichever worker came first
    assert sorted(p.name for p in cache.iterdir()) == files  # nothing rewritten, no temporary file left
    assert files == [f"bach_chorales-music21_{importlib.metadata.version('music21')}-v{music.FORMAT_VERSION}.npz"]
    for split in music.SPLITS:
        assert all(np.array_equal(a, b) for a, b in zip(getattr(first, split), getattr(second, split)))


@needs_music21
def test_a_stale_or_damaged_cache_is_rebuilt(built, tmp_path, monkeypatch):
    _, _, cache, files, _ = built
    arrays = dict(np.load(cache / files[0]))
    calls = []
    monkeypatch.setattr(music, "_build_bach_chorales", lambda: calls.append(1) or arrays)
    path = tmp_path / files[0]
    np.savez(path, **(arrays | {"format_version": np.array(music.FORMAT_VERSION - 1)}))
    assert bach_chorales(cache_dir=tmp_path).ids == built[0].ids and len(calls) == 1
    assert int(np.load(path)["format_version"]) == music.FORMAT_VERSION
    path.write_bytes(b"not a zip")
    assert bach_chorales(cache_dir=tmp_path).ids == built[0].ids and len(calls) == 2
    bach_chorales(cache_dir=tmp_path)
    assert len(calls) == 2


# ------------------------------------------------------------------------------ padded

def test_padded_shapes_lengths_and_cut():
    rolls = [np.ones((3, 88), np.uint8), np.zeros((0, 88), np.uint8), np.eye(5, 88, dtype=np.uint8)]
    batch, lengths = padded(rolls)
    assert batch.shape == (3, 5, 88) and batch.dtype == np.uint8
    assert lengths.dtype == np.int32 and lengths.tolist() == [3, 0, 5]
    assert batch[0, :3].all() and not batch[0, 3:].any() and not batch[1].any()
    assert np.array_equal(batch[2], rolls[2])
    batch, lengths = padded(rolls, max_length=4)
    assert batch.shape == (3, 4, 88) and lengths.tolist() == [3, 0, 4]
    assert np.array_equal(batch[2], rolls[2][:4])
    batch, lengths = padded(rolls, max_length=8)  # a fixed length, longer than any roll
    assert batch.shape == (3, 8, 88) and lengths.tolist() == [3, 0, 5] and not batch[:, 5:].any()
    assert padded([])[0].shape == (0, 0, 88)


def test_padded_errors():
    with pytest.raises(ValueError, match=r"`rolls\[1\]` must have shape \[T, 88\]"):
        padded([np.zeros((2, 88)), np.zeros((2, 87))])
    with pytest.raises(TypeError, match="`rolls` must be a list"):
        padded(np.zeros((2, 3, 88)))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="`max_length` must be a positive int or None"):
            padded([np.zeros((2, 88))], max_length=bad)


# ---------------------------------------------------------------------------- frame_nll

def reference_nll(logits, targets, lengths=None):
    x, y = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    # log sigmoid(x) = -log(1 + exp(-x)), as np.logaddexp(0, -x) keeps it finite.
    nll = (y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)).sum(-1)
    if lengths is None:
        return nll.mean()
    valid = np.arange(x.shape[-2]) < np.asarray(lengths)[..., None]
    return nll[valid].sum() / valid.sum()


def test_frame_nll_against_numpy_float64():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 7, 88))
    targets = rng.random((4, 7, 88)) < 0.1
    lengths = np.array([7, 3, 0, 5], np.int32)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        x = jnp.asarray(logits, dtype)
        got = frame_nll(x, targets.astype(np.uint8))
        assert got.dtype == dtype and got.shape == ()
        np.testing.assert_allclose(float(got), reference_nll(logits, targets), rtol=tol)
        got = frame_nll(x, targets, jnp.asarray(lengths))
        np.testing.assert_allclose(float(got), reference_nll(logits, targets, lengths), rtol=tol)
    # Masked steps do not count, whatever they hold.
    masked = logits.copy()
    masked[1, 3:] = 1e3
    np.testing.assert_allclose(float(frame_nll(jnp.asarray(masked), targets, lengths)),
                               reference_nll(logits, targets, lengths), rtol=1e-12)
    # One sequence [T, 88], no batch axis.
    np.testing.assert_allclose(float(frame_nll(jnp.asarray(logits[0]), targets[0])),
                               reference_nll(logits[0], targets[0]), rtol=1e-12)
    # All logits 0: log 2 per key.
    assert float(frame_nll(jnp.zeros((2, 3, 88)), np.zeros((2, 3, 88)))) == pytest.approx(88 * np.log(2))


def test_frame_nll_is_finite_for_extreme_logits():
    logits = np.full((1, 4, 88), -50.0)
    logits[0, :, :44] = 50.0
    targets = np.zeros((1, 4, 88), np.uint8)
    targets[0, :2, :44] = 1  # steps 0, 1 right (NLL ~ 88 e^-50), steps 2, 3 wrong on 44 keys (50 each)
    for dtype in (np.float32, np.float64):
        got = float(frame_nll(jnp.asarray(logits, dtype), targets))
        assert np.isfinite(got)
        np.testing.assert_allclose(got, reference_nll(logits, targets), rtol=1e-6)
        np.testing.assert_allclose(got, (2 * 0 + 2 * 44 * 50) / 4, rtol=1e-6)
    assert float(frame_nll(jnp.asarray(logits), targets, np.array([2], np.int32))) < 1e-18
    assert float(frame_nll(jnp.asarray(logits), targets, np.array([0], np.int32))) == 0.0


def test_frame_nll_errors():
    x = jnp.zeros((2, 3, 88))
    with pytest.raises(ValueError, match=r"`logits` must have shape \[..., T, 88\]"):
        frame_nll(jnp.zeros((2, 3, 87)), np.zeros((2, 3, 87)))
    with pytest.raises(TypeError, match="`logits` must be floating point"):
        frame_nll(jnp.zeros((2, 3, 88), jnp.int32), np.zeros((2, 3, 88)))
    with pytest.raises(ValueError, match="`targets` must have the shape of `logits`"):
        frame_nll(x, np.zeros((2, 4, 88)))
    with pytest.raises(ValueError, match=r"`lengths` must be integers of shape \(2,\)"):
        frame_nll(x, np.zeros((2, 3, 88)), np.array([1, 2, 3], np.int32))
    with pytest.raises(ValueError, match="`lengths` must be integers"):
        frame_nll(x, np.zeros((2, 3, 88)), np.array([1.0, 2.0]))


# ------------------------------------------------------------------------------ imports

def test_importing_lstm_jax_data_does_not_import_music21():
    code = "import sys, lstm_jax.data; assert 'music21' not in sys.modules, 'music21 imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | {"JAX_PLATFORMS": "cpu"})


def test_missing_music21_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "music21", None)  # `import music21` raises ImportError
    message = r'music21 is not installed\. Install it with `pip install "lstm_jax\[music\]"`'
    with pytest.raises(ImportError, match=message):
        bach_chorales(cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())
