"""The cell contract: :class:`Cell`, its :class:`CellConfig` and :class:`SequenceForm`.

A :class:`Cell` is a NamedTuple of pure functions closed over a frozen, hashable
configuration, in the style of optax's ``GradientTransformation``. Splitting the input
projection (``project``) from the recurrence (``recur``) lets :func:`lstm_jax.unroll` do one
large matmul for all time steps before the scan, so the scan body carries only the recurrent
matmul and elementwise work. Cells compare and hash by their config, so a cell can be a
``jax.jit`` static argument or a field of a Flax or Equinox module.

Shapes use ``...`` for any leading batch shape (including none), ``T`` for time, ``I`` for
the input size, ``H`` for the hidden size and ``O`` for the output size (``H`` unless the
cell projects its output, as an LSTM with ``proj_size`` does).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import jax

Array = jax.Array
Params = Any  # a NamedTuple of arrays (fields are None where an option is off)
Carry = Any  # a NamedTuple of arrays, each with the batch shape in front
Gates = Mapping[str, Array]  # per-step activations by name, each [..., H]

NO_FORMS: Mapping[str, "SequenceForm"] = types.MappingProxyType({})


class CellConfig:
    """Base of every cell family's hyper-parameters: a frozen, hashable dataclass.

    Subclasses are ``@dataclasses.dataclass(frozen=True, repr=False)`` with ``hidden_size``
    as their first field, validate themselves in ``__post_init__`` (so a config that exists
    is a valid one) and build their cell with :meth:`build`. ``constructor`` names the
    function users call (``"lstm"``), which ``repr`` uses: ``lstm(64, peephole=True)``.
    """

    constructor: ClassVar[str] = "cell"
    hidden_size: int

    @property
    def output_size(self) -> int:
        """``O``, the size of ``y_t`` (``H`` unless the family says otherwise)."""
        return self.hidden_size

    def build(self) -> "Cell":
        """The :class:`Cell` this config describes."""
        raise NotImplementedError

    def replace(self, **changes: Any) -> "CellConfig":
        """A copy with ``changes``, built (and validated) again from the arguments this config
        was given, so that values derived from other fields follow the change."""
        given = vars(self).get("_given") or {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return type(self)(**{**given, **changes})

    def __repr__(self) -> str:
        parts = [repr(self.hidden_size)]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "hidden_size" and value != f.default:
                parts.append(f"{f.name}={value!r}")
        return f"{self.constructor}({', '.join(parts)})"


class Resets(NamedTuple):
    """What a :class:`SequenceForm` gets for ``resets``: where, and to what."""

    where: Array  # [T, B] bool: reset the carry before this step (reading order; only valid steps)
    carry: Carry  # leaves [B, ...]: the carry a reset restores


class SequenceForm(NamedTuple):
    """A whole-sequence evaluator of a cell (fused XLA, Pallas, parallel scan).

    ``run(params, xs, carry, *, valid, resets, unroll) -> (ys, carry)`` computes exactly what
    scanning ``recur`` computes, time-major with the batch flattened: ``xs`` leaves
    ``[T, B, ...]`` (the raw inputs, in reading order: :func:`lstm_jax.unroll` has already
    reversed them where needed), ``carry`` leaves ``[B, ...]``, ``valid`` a ``[T, B]`` bool
    mask or None (invalid steps keep the carry and output zeros), ``resets`` a
    :class:`Resets` or None, ``unroll`` the ``lax.scan`` unroll factor. It returns ``ys``
    ``[T, B, O]`` and the final carry. :func:`lstm_jax.unroll` does layout, checks, lengths,
    reverse and resets once for the scan and every form.

    Attributes:
      run: the evaluator.
      lengths: whether ``run`` takes a ``valid`` mask.
      resets: whether ``run`` takes ``resets``.
      auto: whether ``unroll(impl="auto")`` picks this form when it can serve the call: a bool,
        or ``auto(params, xs, carry) -> bool`` for a form that pays only at some sizes.
      note: one line on what the form is, for error messages and docs.
      refuses: ``refuses(params, xs, carry) -> str | None``, or None: why the form cannot serve
        these arrays (a dtype, a backend, an extension that is not built), None if it can.
    """

    run: Callable[..., tuple[Any, Carry]]
    lengths: bool = True
    resets: bool = True
    auto: bool | Callable[[Any, Any, Any], bool] = False
    note: str = ""
    refuses: Callable[[Any, Any, Any], str | None] | None = None


def static_pytree(cls: type) -> type:
    """Registers a NamedTuple of functions as a pytree without leaves: JAX would otherwise
    flatten it (a NamedTuple) into its functions, so that ``jax.tree.map`` walked into them and
    a module holding one (Equinox's ``filter_jit``) compared them by identity. Now the whole
    object is static, compared by its ``__eq__`` and ``__hash__``."""
    jax.tree_util.register_pytree_node(cls, lambda obj: ((), obj), lambda obj, _: obj)
    return cls


def compared_by_config(cls: type) -> type:
    """Class decorator for a NamedTuple of functions with a ``config`` field: equality, hash and
    repr come from the config (functions compare by identity, so two builds of one config
    would otherwise differ), and the object is a :func:`static_pytree`. Used by :class:`Cell`,
    :class:`~lstm_jax.Layer` and :class:`~lstm_jax.Attention`."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, cls) and type(self.config) is type(other.config) and self.config == other.config

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((cls, self.config))

    def __repr__(self) -> str:
        return repr(self.config)

    cls.__eq__, cls.__ne__, cls.__hash__, cls.__repr__ = __eq__, __ne__, __hash__, __repr__
    return static_pytree(cls)


@compared_by_config
class Cell(NamedTuple):
    """A recurrent cell: its config plus pure functions over params, carry and inputs.

    Attributes:
      config: the frozen, hashable :class:`CellConfig`; cells are equal (and hash equally)
        exactly when their configs are, and ``repr`` comes from it.
      init: ``init(key, input_size, *, dtype=jnp.float32) -> params``, a NamedTuple of arrays.
      init_carry: ``init_carry(params, batch_shape=()) -> carry`` of zeros, leaves ``[..., *]``.
      project: ``project(params, xs) -> px``: the input-dependent part of every step, for any
        number of leading axes (all time steps at once in ``unroll``). ``xs`` is ``[..., I]``
        or, for composite cells, a pytree whose leaves share the leading axes.
      recur: ``recur(params, carry, px_t, *, aux=False) -> (carry, y_t)``, or with ``aux``
        ``(carry, y_t, gates)`` where ``gates`` maps names (``"input"``, ``"forget"``...) to
        ``[..., H]`` activations. ``y_t`` is ``[..., O]`` or a pytree of ``[..., *]`` leaves.
      forms: whole-sequence evaluators by name (``"fused"``, ``"pallas"``, ``"parallel"``),
        each a :class:`SequenceForm`; :func:`lstm_jax.unroll`'s ``impl`` picks one.
      noise: optional ``noise(key, xs) -> xs``: draws the cell's per-step randomness (the
        depth-gated LSTM's dropout masks) into its inputs; layers call it when given a key.

    The functions assume checked arguments: :func:`lstm_jax.unroll`, :meth:`step` and every
    layer check params, inputs and carries once, so cell bodies are equations only.
    """

    config: CellConfig
    init: Callable[..., Params]
    init_carry: Callable[..., Carry]
    project: Callable[..., Any]
    recur: Callable[..., tuple]
    forms: Mapping[str, SequenceForm] = NO_FORMS
    noise: Callable[..., Any] | None = None

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def output_size(self) -> int:
        return self.config.output_size

    def step(self, params: Params, carry: Carry, x: Any, *, return_gates: bool = False) -> tuple:
        """One time step from raw input, with params, input and carry checked.

        Args:
          params: the cell's parameters.
          carry: the carry, leaves ``[..., *]``.
          x: ``[..., I]`` input at this step.
          return_gates: also return the step's gate activations (``recur(..., aux=True)``).

        Returns:
          ``(carry, y)`` with ``y`` of shape ``[..., O]``; with ``return_gates``
          ``(carry, y, gates)``.
        """
        from lstm_jax import _checks  # the contract module imports no machinery at import time

        _checks.step_arguments(self, params, carry, x)
        px = self.project(params, x)
        return self.recur(params, carry, px, aux=True) if return_gates else self.recur(params, carry, px)

