"""Polyphonic music, read offline: Bach's four-part chorales as binary piano rolls.

:func:`bach_chorales` reads the chorales that ship with ``music21``'s corpus (nothing is
downloaded) and returns them as a :class:`PianoRolls`: one uint8 ``[T_i, 88]`` array per
chorale, key ``k`` being MIDI pitch ``21 + k`` (A0 .. C8), 1 where that pitch sounds at step
``t``. It is the setting of the JSB Chorales task of Boulanger-Lewandowski et al. (2012),
used by Greff et al. (2015, "LSTM: A search space odyssey"): predict each step's keys from
the steps before it, scored by :func:`frame_nll`. Install the extra::

    pip install "lstm_jax[music]"

The choices, each a rule applied the same way to every chorale:

* **Which chorales.** The 371 chorales of Riemenschneider's numbering, in
  ``music21.corpus.chorales.Iterator`` (a fixed list of the bundled files, read from disk,
  deterministic). Numbers that name the same file (21 of them) are read once: 350 files.
  Kept are those with exactly four parts, the soprano, alto, tenor and bass voices (331;
  three Humdrum files name their four parts ``spine_*``); the 19 scores that add
  instrumental parts (trumpets, horns, obbligato violins, a second soprano) are left out
  rather than cut down to four voices.
* **Duplicates.** A chorale whose piano roll equals, note for note and up to a
  transposition, that of a chorale earlier in BWV order is dropped (3, with music21 10.5:
  ``bwv274``, the same setting as ``bwv62.6``; ``bwv69.6-a``, the same as ``bwv69.6``; and
  ``bwv18.5-w``, the Weimar version of ``bwv18.5-l`` a tone higher). Different
  harmonisations of one melody are different pieces and stay: 328 chorales.
* **Time steps.** One step per quarter note, the first at the first note's onset: step
  ``t`` is on for every pitch that sounds at that instant, i.e. whose note's span
  ``[onset, onset + duration)`` (in quarter notes, exact fractions) holds the step's time.
  So a held note (a half note, or notes tied across a bar line) stays on across its steps,
  and a shorter note (passing eighths, sixteenths, triplets) is on only if it sounds at a
  step's instant; an eighth on the off-beat is not seen. Grace notes take no time and never
  sound. A repeated note is indistinguishable from a held one (a binary roll has no
  onsets). Rests are keys off; where all four voices rest, the step's 88 keys are all 0. A
  rest before the first note (the upbeat bar of four chorales written out as a full bar) is
  not a step, and the last step is the last one a note sounds at. Repeat signs are not
  expanded: the score is read once as written. Two voices on one pitch are one key.
* **Keys.** Not transposed: each chorale keeps its own key (MIDI 36 .. 81 occur, C2 ..
  A5), as in the JSB files of Boulanger-Lewandowski et al. that Greff et al. used, so that
  the models and numbers compare with theirs; a model has to learn the same harmony in
  every key.
* **Split.** By BWV number, fixed: the 328 chorales sorted by their id in natural order
  (``bwv2.6 < bwv10.7 < bwv18.5-l < bwv153.1``: the numbers compared as numbers) go to valid
  when their index ``i % 5 == 3``, to test when ``i % 5 == 4``, else to train: 198 / 65 /
  65 chorales (60 / 20 / 20). A rule, not a seeded shuffle, so that it cannot move with a
  library version. The same melody harmonised in two cantatas can fall in two splits, as
  in the JSB split.

With music21 10.5.1: train 198 chorales / 10,706 steps, valid 65 / 3,393, test 65 / 3,427
(17,526 in all; 24 to 193 steps a chorale).

The encoded rolls are cached in one ``.npz`` in the user cache directory
(:func:`lstm_jax.data.text.cache_directory`: ``cache_dir``, ``$LSTM_JAX_CACHE``,
``$XDG_CACHE_HOME/lstm_jax`` or ``~/.cache/lstm_jax``), its name holding the music21
version and :data:`FORMAT_VERSION`, which is also stored inside and checked; a missing,
damaged or stale file is rebuilt. Parsing the 350 files takes about 20 s on one core; a
cached load about 0.3 s (most of it importing music21).

``import lstm_jax.data`` does not import music21; :func:`bach_chorales` does, when called.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.data.text import SPLITS, _load, _save, cache_directory

NUM_KEYS = 88
LOWEST_MIDI = 21  # A0; key k is MIDI pitch LOWEST_MIDI + k, up to C8 = 108
MUSIC21_INSTALL = 'pip install "lstm_jax[music]"'
# Version of the encoding, selection and split rules above; in the cache file's name and contents.
FORMAT_VERSION = 1
# The split over the chorales sorted by id (natural order): index i % SPLIT_PERIOD.
SPLIT_PERIOD, VALID_INDEX, TEST_INDEX = 5, 3, 4


class PianoRolls(NamedTuple):
    """Pieces as binary piano rolls, in three splits.

    Attributes:
      name: the collection (``"bach_chorales"``).
      train, valid, test: one uint8 ``[T_i, 88]`` array of 0/1 per piece (read-only), key
        ``k`` being MIDI pitch ``21 + k``.
      ids: split -> the pieces' ids in the order of that split's list (``"bwv269"``, ...).
    """

    name: str
    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    ids: dict[str, list[str]]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))} pieces/{sum(len(r) for r in getattr(self, s)):,} steps"
                          for s in SPLITS)
        return f"PianoRolls({self.name!r}, {sizes})"


# ------------------------------------------------------------------------------ rules

def natural_key(chorale_id: str) -> tuple:
    """Sort key of an id with its numbers compared as numbers: ``bwv2.6 < bwv10.7``."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", chorale_id)))


def split_of(index: int) -> str:
    """The split of the chorale at ``index`` among the kept chorales sorted by :func:`natural_key`."""
    return {VALID_INDEX: "valid", TEST_INDEX: "test"}.get(index % SPLIT_PERIOD, "train")


def _import_music21():
    try:
        import music21
    except ImportError as e:
        raise ImportError(f"The Bach chorales are read from music21's corpus, and music21 is not installed. "
                          f"Install it with `{MUSIC21_INSTALL}`.") from e
    return music21


def score_roll(score) -> np.ndarray:
    """A parsed music21 score as a uint8 ``[T, 88]`` piano roll, by the rules of the module docstring."""
    spans = []  # (onset, end, midi) in quarter notes
    for part in score.parts:
        for note in part.flatten().notes:  # notes and chords; rests are simply not there
            duration = note.duration.quarterLength
            if note.duration.isGrace or duration <= 0:
                continue
            onset = note.offset  # in the flattened part, whose offset in the score is 0
            spans.extend((onset, onset + duration, pitch.midi) for pitch in note.pitches)
    if not spans:
        raise ValueError("The score has no notes.")
    first = math.floor(min(onset for onset, _, _ in spans))
    steps = math.ceil(max(end for _, end, _ in spans)) - first
    roll = np.zeros((steps, NUM_KEYS), np.uint8)
    for onset, end, midi in spans:
        if not LOWEST_MIDI <= midi < LOWEST_MIDI + NUM_KEYS:
            raise ValueError(f"MIDI pitch {midi} is outside the 88 keys [21, 108].")
        # The steps t (at time first + t) with onset <= first + t < end.
        roll[math.ceil(onset) - first:math.ceil(end) - first, midi - LOWEST_MIDI] = 1
    return roll


def _transposition_free(roll: np.ndarray) -> bytes:
    """A roll with the keys below its lowest sounding key removed: equal for transposed copies."""
    keys = np.flatnonzero(roll.any(axis=0))
    cut = roll[:, keys[0]:keys[-1] + 1] if keys.size else roll
    return repr(cut.shape).encode() + np.ascontiguousarray(cut).tobytes()


def _build_bach_chorales() -> dict[str, np.ndarray]:
    """The cache file's arrays: per split the rolls one after the other, their lengths and ids."""
    music21 = _import_music21()
    files = list(dict.fromkeys(music21.corpus.chorales.Iterator(returnType="filename")))
    rolls = {}
    for name in files:
        score = music21.corpus.parse(name, forceSource=True)  # forceSource: no pickles left in a temp folder
        if len(score.parts) == 4:
            rolls[name.rsplit("/", 1)[-1]] = score_roll(score)
    kept, seen = [], set()
    for chorale in sorted(rolls, key=natural_key):
        key = _transposition_free(rolls[chorale])
        if key not in seen:
            seen.add(key)
            kept.append(chorale)
    arrays = {"format_version": np.array(FORMAT_VERSION)}
    for split in SPLITS:
        ids = [c for i, c in enumerate(kept) if split_of(i) == split]
        arrays |= {f"{split}_rolls": np.concatenate([rolls[c] for c in ids] or [np.zeros((0, NUM_KEYS), np.uint8)]),
                   f"{split}_lengths": np.array([len(rolls[c]) for c in ids], np.int64),
                   f"{split}_ids": np.array(ids, dtype=str)}
    return arrays


def bach_chorales(*, cache_dir=None) -> PianoRolls:
    """Bach's four-part chorales from music21's bundled corpus, as piano rolls split by BWV number.

    The selection, the quarter-note steps, the duplicates dropped and the split are the
    rules of the module docstring (:mod:`lstm_jax.data.music`). With music21 10.5.1: 328
    chorales, train 198 (10,706 steps), valid 65 (3,393), test 65 (3,427); 24 to 193
    steps each.

    Args:
      cache_dir: the cache directory (see :func:`lstm_jax.data.text.cache_directory`). The
        encoded rolls are written there on the first call (parsing every chorale, about
        20 s) and read on the next ones.

    Returns:
      The :class:`PianoRolls`, named ``"bach_chorales"``; ``ids`` are the files' names
      (``"bwv269"``, ``"bwv153.1"``, ``"bwv248.12-2"``, ...).

    Raises:
      ImportError: music21 is not installed (the message says how to install it).
    """
    music21 = _import_music21()
    path = cache_directory(cache_dir) / f"bach_chorales-music21_{music21.__version__}-v{FORMAT_VERSION}.npz"
    keys = ["format_version"] + [f"{s}_{k}" for s in SPLITS for k in ("rolls", "lengths", "ids")]
    arrays = _load(path, keys)
    if arrays is None or arrays["format_version"].shape != () or int(arrays["format_version"]) != FORMAT_VERSION:
        arrays = _build_bach_chorales()
        _save(path, arrays)
    splits = {}
    for split in SPLITS:
        rolls = np.array(arrays[f"{split}_rolls"], np.uint8)
        rolls.setflags(write=False)
        offsets = np.cumsum(arrays[f"{split}_lengths"])[:-1]
        splits[split] = list(np.split(rolls, offsets)) if len(arrays[f"{split}_lengths"]) else []
    return PianoRolls("bach_chorales", splits["train"], splits["valid"], splits["test"],
                      {s: [str(i) for i in arrays[f"{s}_ids"]] for s in SPLITS})


# ------------------------------------------------------------------------ batches, loss

def padded(rolls: Sequence[np.ndarray], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Piano rolls of different lengths as one zero-padded batch.

    Args:
      rolls: ``N`` arrays ``[T_i, 88]`` (a split of :class:`PianoRolls`).
      max_length: if given, the batch has exactly this many steps: longer rolls are cut,
        shorter ones padded (a fixed shape for every split, one compilation). Else the
        longest roll's length.

    Returns:
      ``(rolls, lengths)``: uint8 ``[N, T, 88]``, zero after each roll's end, and int32
      ``[N]``, each roll's length (at most ``T``), for ``lengths=`` of the cells and of
      :func:`frame_nll`.
    """
    if isinstance(rolls, np.ndarray) or not isinstance(rolls, Sequence):
        raise TypeError(f"`rolls` must be a list of [T_i, {NUM_KEYS}] arrays, got {type(rolls).__name__}.")
    arrays = [np.asarray(r) for r in rolls]
    for i, r in enumerate(arrays):
        if r.ndim != 2 or r.shape[1] != NUM_KEYS:
            raise ValueError(f"`rolls[{i}]` must have shape [T, {NUM_KEYS}], got {r.shape}.")
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length <= 0:
            raise ValueError(f"`max_length` must be a positive int or None, got {max_length!r}.")
        steps = int(max_length)
    else:
        steps = max((len(r) for r in arrays), default=0)
    lengths = np.array([min(len(r), steps) for r in arrays], np.int32)
    batch = np.zeros((len(arrays), steps, NUM_KEYS), np.uint8)
    for i, (r, n) in enumerate(zip(arrays, lengths)):
        batch[i, :n] = r[:n]
    return batch, lengths


def frame_nll(logits, targets, lengths=None) -> jax.Array:
    """Frame-level negative log-likelihood of binary piano rolls, in nats per step.

    Each of the 88 keys is a Bernoulli variable with probability ``sigmoid(logits)``; the
    NLL of a step is the sum over its keys of ``-(y log p + (1 - y) log(1 - p))``, computed
    from the logits with ``log_sigmoid`` (finite for any finite logit). The result is the
    mean over all valid steps of all sequences together (each step counts once, so longer
    pieces count more), the measure of Boulanger-Lewandowski et al. (2012) and Greff et al.
    (2015) (who report it as a log-likelihood, the negative).

    Args:
      logits: float ``[..., T, 88]``.
      targets: ``[..., T, 88]``, 0/1 (any numeric or bool dtype).
      lengths: optional int ``[...]``: steps ``t >= lengths`` are not counted. None counts
        every step.

    Returns:
      A float scalar in the dtype of ``logits`` (0 when no step is valid).
    """
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"`logits` must be floating point, got dtype {logits.dtype}.")
    if logits.ndim < 2 or logits.shape[-1] != NUM_KEYS:
        raise ValueError(f"`logits` must have shape [..., T, {NUM_KEYS}], got {logits.shape}.")
    targets = jnp.asarray(targets)
    if targets.shape != logits.shape:
        raise ValueError(f"`targets` must have the shape of `logits` {logits.shape}, got {targets.shape}.")
    y = targets.astype(logits.dtype)
    per_step = -jnp.sum(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits), axis=-1)
    if lengths is None:
        return jnp.mean(per_step) if per_step.size else jnp.zeros((), logits.dtype)
    lengths = jnp.asarray(lengths)
    if lengths.shape != logits.shape[:-2] or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"`lengths` must be integers of shape {logits.shape[:-2]} (the leading axes of "
                         f"`logits`), got {lengths.dtype} {lengths.shape}.")
    valid = jnp.arange(logits.shape[-2], dtype=lengths.dtype) < lengths[..., None]
    count = jnp.sum(valid).astype(logits.dtype)
    return jnp.sum(jnp.where(valid, per_step, 0)) / jnp.maximum(count, 1)
