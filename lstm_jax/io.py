r"""Models for inference: :func:`save` / :func:`load` one file, and :func:`export_step`.

**The saved file** is a NumPy ``.npz`` archive (read with ``allow_pickle=False``: loading runs
no code from the file) holding

* ``"__lstm_jax__"``: a JSON string: the format and its version, the model's kind, the
  parameters' dtype (and the input size of a cell or layer), ``repr(model)`` for people, and
  the model's **config tree**: every config is a frozen dataclass, written as ``{"type":
  class name, "fields": {...}}`` (a cell config's fields as its constructor was given them),
  a cell, attention, layer or model as ``{"build": its config}``, tuples and lists tagged;
  initialisers are ``None`` or the dataclasses of :mod:`lstm_jax.initializers`;
* the parameters, one array per leaf, named by key path (``"params.body[0].w_x"``); dtypes
  NumPy has no code for (bfloat16) are stored as same-width unsigned integers and viewed
  back.

:func:`load` rebuilds the model from the config tree (looking class names up among the
config classes this process has imported: every cell family of the library, its layers, the
language model, the initialisers; never importing anything the file names), builds the
parameters' tree with ``jax.eval_shape(model.init, ...)`` and fills it, checking every
shape and dtype: a fresh process needs the library and the file, not the training code, its
``TrainConfig`` or optimiser state. :func:`save` refuses what it could not rebuild (an
arbitrary function as initialiser, a config whose rebuild would differ), naming where.

**The exported step** (:func:`export_step`) is a ``jax.export`` (StableHLO) artifact of one
generation step of a language model with its parameters baked in as constants, for a fixed
batch size: it runs with ``jax`` alone, without lstm_jax or the model code::

    step = jax.export.deserialize(open(path, "rb").read())
    carry = tuple(np.zeros(a.shape, a.dtype) for a in step.in_avals[2:])   # any values: reset below
    logits, carry = step.call(token, np.ones(B, bool), carry)   # reset: start from the initial carry
    logits, carry = step.call(next_token, np.zeros(B, bool), carry)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig
from lstm_jax.cells.attention import Attention, AttentionConfig
from lstm_jax.layers import BidirectionalConfig, Layer, LayerConfig, StackConfig, bidirectional, layer, stack
from lstm_jax.models.language_model import LanguageModel, LanguageModelConfig, language_model
from lstm_jax.models.readout import Model, readout
from lstm_jax.ops import tree_where

FORMAT = "lstm_jax.save"
VERSION = 1
META = "__lstm_jax__"  # the npz entry that holds the JSON description

_INITIALIZERS = (inits.VarianceScaling, inits.Orthogonal, inits.Uniform, inits.Constant)
_BUILT = (Cell, Attention, Layer, LanguageModel)  # objects that are their config, built


# ------------------------------------------------------------------------------ config trees

def _subclasses(base: type) -> list[type]:
    found = []
    for sub in base.__subclasses__():
        found += [sub] + _subclasses(sub)
    return found


def _config_classes() -> dict[str, list[type]]:
    """Class name -> the config dataclasses of that name this process knows (imported ones)."""
    known: dict[str, list[type]] = {}
    candidates = [*_subclasses(CellConfig), *_subclasses(AttentionConfig), LayerConfig, StackConfig,
                  BidirectionalConfig, LanguageModelConfig, *_INITIALIZERS]
    for cls in candidates:
        if dataclasses.is_dataclass(cls) and cls not in known.get(cls.__name__, []):
            known.setdefault(cls.__name__, []).append(cls)
    return known


def _build(config: Any) -> Any:
    """The cell, attention, layer or model that ``config`` describes."""
    match config:
        case CellConfig() | AttentionConfig():
            return config.build()
        case LayerConfig():
            return layer(config.cell, reverse=config.reverse, time_major=config.time_major,
                         unroll=True if config.unroll == "all" else config.unroll, impl=config.impl,
                         remat_chunk=config.remat_chunk, learn_initial_carry=config.learn_initial_carry)
        case StackConfig():
            return stack(list(config.layers), dropout_rate=config.dropout_rate)
        case BidirectionalConfig():
            return bidirectional(config.forward, config.backward, merge=config.merge)
        case LanguageModelConfig():
            return language_model(config.body, config.vocab_size, embed_size=config.embed_size,
                                  dropout_rate=config.dropout_rate, tie_embeddings=config.tie_embeddings)
    raise TypeError(f"no builder for {type(config).__name__}")  # unreachable: encoding refused it


def _refuse(where: str, value: Any, why: str) -> NoReturn:
    raise TypeError(f"cannot save `{where}` = {value!r}: {why}")


def _encode(value: Any, where: str) -> Any:
    """A JSON-able description of a config value (see the module docstring)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else {"float": repr(float(value))}
    if isinstance(value, _BUILT):
        return {"build": _encode(value.config, where)}
    if isinstance(value, Model):
        return {"readout": {"body": _encode(value.body, f"{where}.body"), "output_size": value.output_size,
                            "at": value.at}}
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {kind: [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    cls = type(value)
    if dataclasses.is_dataclass(value) and _config_classes().get(cls.__name__) == [cls]:
        given = vars(value).get("_given")  # a cell config: what its constructor was given
        fields = given if given is not None else {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"type": cls.__name__, "fields": {k: _encode(v, f"{where}.{k}") for k, v in fields.items()}}
    if dataclasses.is_dataclass(value):
        _refuse(where, value, f"{cls.__name__} is not a config class this library can rebuild (or its name is "
                              "ambiguous among the imported ones).")
    if callable(value):
        _refuse(where, value, "a function cannot be written to a file; use None (the default) or an "
                              "initialiser from lstm_jax.initializers (frozen dataclasses such as "
                              "lstm_jax.initializers.orthogonal(1.0) or glorot_uniform()).")
    _refuse(where, value, f"values of type {cls.__name__} cannot be saved.")


def _decode(data: Any, where: str = "model") -> Any:
    if data is None or isinstance(data, (bool, str, int, float)):
        return data
    if isinstance(data, list):
        raise ValueError(f"{where}: an untagged list in the config tree (not written by lstm_jax.save).")
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise ValueError(f"{where}: an unknown entry in the config tree: {data!r}.")
    if "float" in data:
        return float(data["float"])
    if "tuple" in data or "list" in data:
        items = [_decode(v, f"{where}[{i}]") for i, v in enumerate(data.get("tuple", data.get("list")))]
        return tuple(items) if "tuple" in data else items
    if "build" in data:
        return _build(_decode(data["build"], where))
    if "readout" in data:
        spec = data["readout"]
        return readout(_decode(spec["body"], f"{where}.body"), spec["output_size"], at=spec["at"])
    if "type" in data:
        classes = _config_classes().get(data["type"], [])
        if len(classes) != 1:
            raise ValueError(f"{where}: the file needs the config class {data['type']!r}, which this process "
                             f"{'does not know' if not classes else 'knows more than once'}; import the "
                             "module that defines it before loading.")
        fields = {k: _decode(v, f"{where}.{k}") for k, v in data["fields"].items()}
        return classes[0](**fields)
    raise ValueError(f"{where}: an unknown entry in the config tree: {data!r}.")


# ------------------------------------------------------------------------------ params

def _kind(model: Any) -> str:
    for kind, cls in (("language_model", LanguageModel), ("cell", Cell), ("layer", Layer), ("readout", Model)):
        if isinstance(model, cls):
            return kind
    raise TypeError("`model` must be a LanguageModel, a readout Model, a Layer or a Cell, got "
                    f"{type(model).__name__}.")


def _input_size(body: Cell | Layer, params: Any) -> int:
    """The input size ``params`` were made for (read from the first cell's params)."""
    if isinstance(body, Cell):
        return _checks.params(body, params)[1]
    config = body.config
    if isinstance(config, StackConfig):
        return _input_size(config.layers[0], params[0])
    if isinstance(config, BidirectionalConfig):
        return _input_size(config.forward, params.forward)
    return _input_size(config.cell, params.cell if config.learn_initial_carry else params)


def _params_shapes(model: Any, kind: str, dtype: Any, input_size: int | None) -> Any:
    key = jax.random.key(0)
    if kind == "language_model":
        return jax.eval_shape(lambda k: model.init(k, dtype=dtype), key)
    return jax.eval_shape(lambda k: model.init(k, input_size, dtype=dtype), key)


def _leaf_names(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("params" + jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def _storable(a: np.ndarray) -> np.ndarray:
    """``a`` as NumPy can write it: extension dtypes (bfloat16...) viewed as unsigned ints."""
    return a if a.dtype.kind in "biufc" else a.view(np.dtype(f"u{a.dtype.itemsize}"))


# ------------------------------------------------------------------------------ save / load

def save(path: str | os.PathLike, model: Any, params: Any) -> pathlib.Path:
    """Writes ``model`` and ``params`` to one file that :func:`load` reads back.

    Args:
      path: the file to write (replaced atomically; no suffix is added; ``.npz`` is customary).
      model: a :class:`~lstm_jax.models.LanguageModel`, a :func:`~lstm_jax.models.readout`
        model, a :class:`~lstm_jax.Layer` or a :class:`~lstm_jax.Cell`, with any cells and
        layers of the library inside.
      params: its parameters (checked against ``jax.eval_shape`` of its ``init``).

    Returns:
      The path written.

    Raises:
      TypeError: an unsupported model; a config value that cannot be written (a function as
        initialiser: the message names where it sits); params of another structure or dtype.
      ValueError: params of the wrong shapes; a config whose rebuild would differ.
    """
    kind = _kind(model)
    leaves = _leaf_names(params)
    if not leaves:
        raise TypeError(f"`params` must be the parameters of {model!r}, got {type(params).__name__} without arrays.")
    dtype = _checks.floating_dtype(leaves[0][0], leaves[0][1].dtype)
    input_size = None
    if kind != "language_model":
        input_size = _input_size(model if kind != "readout" else model.body,
                                 params if kind != "readout" else params.body)
    want = _params_shapes(model, kind, dtype, input_size)
    _checks.tree_like("params", params, want, f"{model!r}.init")
    config = _encode(model, "model")
    if _decode(json.loads(json.dumps(config))) != model:
        raise ValueError(f"{model!r} cannot be saved faithfully: its config rebuilt from the file would differ.")
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "dtype": jnp.dtype(dtype).name,
            "input_size": input_size, "repr": repr(model), "model": config,
            "arrays": {name: {"dtype": np.asarray(leaf).dtype.name, "shape": list(np.shape(leaf))}
                       for name, leaf in leaves}}
    arrays = {name: _storable(np.asarray(leaf)) for name, leaf in leaves}
    path = pathlib.Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent or ".", prefix=f".{path.name}.", delete=False) as f:
        try:
            np.savez(f, **{META: np.array(json.dumps(meta))}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            os.unlink(f.name)
            raise
    os.replace(f.name, path)
    return path


def load(path: str | os.PathLike) -> tuple[Any, Any]:
    """Reads a file written by :func:`save`: ``(model, params)``, equal to what was saved.

    The parameters come back as JAX arrays in the exact NamedTuple structure of
    ``model.init`` (``jax.eval_shape`` gives the tree); every array's shape and dtype is
    checked against it. Nothing in the file is executed (``allow_pickle=False``).

    Raises:
      ValueError: not a file of this format or version; a config class this process does
        not know; a missing, extra or misshapen array (named).
    """
    with np.load(pathlib.Path(path), allow_pickle=False) as archive:
        if META not in archive.files:
            raise ValueError(f"{str(path)!r} is not a file written by lstm_jax.save (no {META!r} entry).")
        meta = json.loads(str(archive[META]))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{str(path)!r} has format {meta.get('format')!r} version {meta.get('version')!r}; "
                             f"this lstm_jax reads {FORMAT!r} version {VERSION}.")
        arrays = {name: archive[name] for name in archive.files if name != META}
    model = _decode(meta["model"])
    if _kind(model) != meta["kind"]:
        raise ValueError(f"{str(path)!r} describes a {meta['kind']} but holds a {_kind(model)}.")
    want = _params_shapes(model, meta["kind"], jnp.dtype(meta["dtype"]), meta["input_size"])
    named = _leaf_names(want)
    extra = sorted(set(arrays) - {name for name, _ in named})
    if extra:
        raise ValueError(f"{str(path)!r} holds arrays that {meta['repr']} does not have: {extra}.")
    values = []
    for name, w in named:
        if name not in arrays:
            raise ValueError(f"{str(path)!r} lacks `{name}` ({tuple(w.shape)} {w.dtype}) of {meta['repr']}.")
        stored = meta["arrays"][name]["dtype"]
        a = arrays[name].view(jnp.dtype(stored))
        if a.shape != tuple(w.shape) or jax.dtypes.canonicalize_dtype(a.dtype) != w.dtype:
            raise ValueError(f"`{name}` in {str(path)!r} is {a.shape} {a.dtype}; {meta['repr']} needs "
                             f"{tuple(w.shape)} {w.dtype}.")
        values.append(jnp.asarray(a))
    return model, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(want), values)


# ------------------------------------------------------------------------------ export

def export_step(
    path: str | os.PathLike,
    lm: LanguageModel,
    params: Any,
    batch_size: int,
    *,
    platforms: tuple[str, ...] | None = None,
) -> jax.export.Exported:
    """Writes one generation step of ``lm`` as a ``jax.export`` (StableHLO) artifact.

    The exported function is ``(token, reset, carry) -> (logits, carry)`` with

    * ``token`` int32 ``[B]``: the token read at this step;
    * ``reset`` bool ``[B]``: True where a row starts afresh from the model's initial carry
      (zeros, or a layer's learned initial carry) before reading ``token``;
    * ``carry``: a tuple of arrays, the leaves of ``lm.init_carry(params, (B,))`` (shapes
      and dtypes in ``exported.in_avals[2:]``);
    * ``logits`` ``[B, V]`` in the parameters' dtype, the same values as ``lm.step``.

    The parameters (and the initial carry) are baked into the program as constants, so the
    file is the whole model: ``jax.export.deserialize(data).call(...)`` runs it in a process
    that has only ``jax`` (and no lstm_jax). The batch size is fixed; the program is
    serialised for ``platforms`` (default: the current backend, e.g. ``("cpu",)``; list
    several, e.g. ``("cpu", "cuda")``, to run it on either).

    Returns:
      The ``jax.export.Exported`` (also written to ``path`` as ``exported.serialize()``).

    Raises:
      TypeError: ``lm`` is not a language model; params of another structure.
      ValueError: a non-positive batch size; a body that cannot step (reads backwards).
    """
    if not isinstance(lm, LanguageModel):
        raise TypeError(f"`lm` must be a LanguageModel (from lstm_jax.language_model), got {type(lm).__name__}.")
    B = _checks.positive_int("batch_size", batch_size)
    start = lm.init_carry(params, (B,))  # checks params
    leaves, treedef = jax.tree_util.tree_flatten(start)

    def step(token, reset, carry):
        carry = tree_where(reset, start, jax.tree_util.tree_unflatten(treedef, carry))
        carry, logits = lm.step(params, carry, token)
        return logits, tuple(jax.tree_util.tree_leaves(carry))

    args = (jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((B,), jnp.bool_),
            tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves))
    exported = jax.export.export(jax.jit(step), platforms=platforms)(*args)
    pathlib.Path(path).write_bytes(exported.serialize())
    return exported
