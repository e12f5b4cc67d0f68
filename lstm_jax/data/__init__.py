"""Data for experiments: synthetic long-lag tasks generated on the fly from a PRNG key, and
the tasks' evaluation protocols (:mod:`lstm_jax.data.tasks`); host-side batch sources read by
training step (:mod:`lstm_jax.data.batches`); text corpora for character-level language
models, read offline (:mod:`lstm_jax.data.text`); Bach chorales as piano rolls for
polyphonic music models, read offline from music21's corpus (:mod:`lstm_jax.data.music`;
music21 is imported only when the chorales are loaded)."""

from lstm_jax.data.batches import ArrayBatches, BatchSource, StreamBatches, TextChunk
from lstm_jax.data.music import PianoRolls, bach_chorales, frame_nll, padded
from lstm_jax.data.synthetic import (
    ADDING_BASELINE_MSE,
    Batch,
    adding_problem,
    adding_problem_1997,
    copy_memory,
    copy_memory_baseline,
    temporal_order,
)
from lstm_jax.data.tasks import TASKS, Task, get_task
from lstm_jax.data.text import Corpus, Vocab, play_text, shakespeare, text_file

__all__ = ["ADDING_BASELINE_MSE", "ArrayBatches", "Batch", "BatchSource", "Corpus", "PianoRolls", "StreamBatches",
           "TASKS", "Task", "TextChunk", "Vocab", "adding_problem", "adding_problem_1997", "bach_chorales",
           "copy_memory", "copy_memory_baseline", "frame_nll", "get_task", "padded", "play_text", "shakespeare",
           "temporal_order", "text_file"]
