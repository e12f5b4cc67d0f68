"""The cell contract shared by every recurrent cell in the library.

A :class:`Cell` is a NamedTuple of pure functions, in the style of optax's
``GradientTransformation`` and stax's ``(init_fn, apply_fn)`` pairs. Splitting the
input projection (``project``) from the recurrence (``recur``) lets :func:`lstm_jax.unroll`
do one large matmul for all time steps before the scan, so the scan body carries only
``h @ W_h`` and elementwise work.

Shapes use ``...`` for any leading batch shape (including none), ``I`` for the input
size, ``H`` for the hidden size and ``O`` for the output size (``H`` unless the cell
projects its output, as an LSTM with ``proj_size`` does).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a NamedTuple of arrays (fields may be None where an option is off)
Carry = Any  # a NamedTuple of arrays, each with the batch shape in front
Gates = Mapping[str, Array]  # per-step activations by name, each [..., H]


class Cell(NamedTuple):
    """A recurrent cell: pure functions plus the hyper-parameters they close over.

    Attributes:
      init: ``init(key, input_size, *, dtype=jnp.float32) -> params``.
      init_carry: ``init_carry(params, batch_shape=()) -> carry`` of zeros.
      project: ``project(params, xs[..., I]) -> px``: the input-dependent part of every
        step, for any number of leading axes (all time steps at once in ``unroll``).
      recur: ``recur(params, carry, px_t) -> (carry, y_t[..., O])``: the recurrent part.
      recur_with_gates: like ``recur`` but returns ``(carry, y_t, gates)`` where ``gates``
        maps names (e.g. ``"input"``, ``"forget"``) to ``[..., H]`` activations. Only
        traced when asked for, so the default path pays nothing for it.
      hidden_size: ``H``.
      output_size: ``O``, the size of ``y_t``.
      name: the family name, e.g. ``"lstm"``.
      options: the constructor's keyword arguments, for ``repr`` and interop.
      fused: optional fast path over a whole sequence, used by :func:`lstm_jax.unroll`:
        ``fused(params, xs[T, B, I], carry, valid, unroll, kernel="xla") -> (ys[T, B, O], carry)``
        with carry leaves ``[B, n]``, ``valid`` a ``[T, B, 1]`` bool step mask or None and
        ``kernel`` ``"xla"`` or ``"pallas"`` (raising where unsupported). It must compute
        exactly what scanning ``recur`` computes (see :mod:`lstm_jax.fused`).
    """

    init: Callable[..., Params]
    init_carry: Callable[..., Carry]
    project: Callable[[Params, Array], Any]
    recur: Callable[[Params, Carry, Any], tuple[Carry, Array]]
    recur_with_gates: Callable[[Params, Carry, Any], tuple[Carry, Array, Gates]]
    hidden_size: int
    output_size: int
    name: str
    options: Mapping[str, Any]
    fused: Callable[..., tuple[Array, Carry]] | None = None

    def step(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """One time step from raw input: ``recur(params, carry, project(params, x))``.

        Args:
          params: the cell's parameters.
          carry: the carry, leaves ``[..., *]``.
          x: ``[..., I]`` input at this step.

        Returns:
          ``(carry, y)`` with ``y`` of shape ``[..., O]``.
        """
        return self.recur(params, carry, self.project(params, x))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})"


def make_cell(
    *,
    name: str,
    options: Mapping[str, Any],
    hidden_size: int,
    output_size: int,
    init: Callable[..., Params],
    init_carry: Callable[..., Carry],
    project: Callable[[Params, Array], Any],
    recur_impl: Callable[[Params, Carry, Any, bool], tuple],
    fused: Callable[..., tuple[Array, Carry]] | None = None,
) -> Cell:
    """Builds a :class:`Cell` from one recurrence implementation.

    ``recur_impl(params, carry, px, with_gates)`` returns ``(carry, y)`` or, when
    ``with_gates`` is true, ``(carry, y, gates)``; ``with_gates`` is a Python bool so the
    two paths trace separately. ``fused`` is the optional whole-sequence fast path.
    """

    def recur(params, carry, px):
        return recur_impl(params, carry, px, False)

    def recur_with_gates(params, carry, px):
        return recur_impl(params, carry, px, True)

    return Cell(
        init=init,
        init_carry=init_carry,
        project=project,
        recur=recur,
        recur_with_gates=recur_with_gates,
        hidden_size=hidden_size,
        output_size=output_size,
        name=name,
        options=dict(options),
        fused=fused,
    )


def zeros_carry(carry_type, sizes: Mapping[str, int], dtype, batch_shape=()):
    """A carry NamedTuple of zeros: field ``name`` gets shape ``[*batch_shape, sizes[name]]``."""
    batch_shape = tuple(batch_shape)
    return carry_type(**{k: jnp.zeros(batch_shape + (n,), dtype) for k, n in sizes.items()})


ACTIVATIONS: Mapping[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


@jax.custom_vjp
def clip_gradient(x: Array, bound: Array) -> Array:
    """Identity on the way forward; clips the incoming gradient to ``[-bound, bound]``.

    This is the "derivative clipping" of Graves 2013 (sec. 4): applied to a cell's gate
    pre-activations, it bounds the error signal entering the gates at every step without
    touching the forward computation. ``bound`` gets no gradient.
    """
    del bound
    return x


def _clip_gradient_fwd(x, bound):
    return x, bound


def _clip_gradient_bwd(bound, g):
    bound = jnp.asarray(bound, g.dtype)
    return jnp.clip(g, -bound, bound), jnp.zeros_like(bound)


clip_gradient.defvjp(_clip_gradient_fwd, _clip_gradient_bwd)


def layer_norm(x: Array, gain: Array, bias: Array | None = None, eps: float = 1e-5) -> Array:
    """Normalises ``x[..., n]`` over its last axis, then scales by ``gain [n]`` (and shifts by
    ``bias [n]``); statistics in at least float32, result in ``x``'s dtype."""
    xf = x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x  # bf16/f16 stats in f32
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype) * gain
    return y if bias is None else y + bias


def split_blocks(pre: Array, names: tuple[str, ...]) -> dict[str, Array]:
    """Splits ``pre[..., G*H]`` into ``{name: [..., H]}`` for the ``G`` gate ``names``."""
    return dict(zip(names, jnp.split(pre, len(names), axis=-1)))
