"""Shared math: activations, layer norm, derivative clipping, gate blocks, masked softmax and
the one LSTM update that every LSTM-like cell and kernel uses."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS: Mapping[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


def _identity(x: Array) -> Array:
    return x


def lstm_update(
    z_i: Array | None,
    z_f: Array | None,
    z_g: Array,
    z_o: Array | None,
    c_prev: Array,
    *,
    peephole_i: Array | None = None,
    peephole_f: Array | None = None,
    peephole_o: Array | None = None,
    coupled: bool = False,
    cell_input: Array | None = None,
    input_activation: Callable[[Array], Array] = jnp.tanh,
    output_activation: Callable[[Array], Array] = jnp.tanh,
    cell_output: Callable[[Array], Array] = _identity,
    clip: Callable[[Array], Array] = _identity,
) -> tuple[Array, Array, dict[str, Array]]:
    r"""One LSTM update from gate pre-activations: the equations every LSTM here shares.

    .. math::

        f &= \sigma(z_f + p_f \odot c_{t-1}), \qquad
        i = \sigma(z_i + p_i \odot c_{t-1}) \;(\text{or } 1 - f \text{ if coupled}) \\
        g &= \phi_{in}(z_g), \qquad c_t = f \odot c_{t-1} + i \odot g \,(+\, \text{cell\_input}) \\
        o &= \sigma(z_o + p_o \odot c_t), \qquad h_t = o \odot \phi_{out}(\text{cell\_output}(c_t))

    A gate whose pre-activation is None is fixed open (``1``: Greff et al.'s NIG, NFG, NOG);
    a peephole that is None is absent. ``clip`` wraps every pre-activation before its
    nonlinearity (derivative clipping); ``cell_input`` is an extra term added to ``c_t``
    (the depth-gated LSTM's ``d \odot c^{l-1}_t``); ``cell_output`` maps ``c_t`` before the
    output activation (the layer-normalised LSTM). All arrays ``[..., H]``.

    Returns:
      ``(h, c, gates)`` with ``gates`` the activations ``input``, ``forget``, ``candidate``,
      ``output`` that exist.
    """
    peep = lambda z, p, c: clip(z if p is None else z + p * c)
    f = None if z_f is None else jax.nn.sigmoid(peep(z_f, peephole_f, c_prev))
    if coupled:
        i = 1.0 - f
    else:
        i = None if z_i is None else jax.nn.sigmoid(peep(z_i, peephole_i, c_prev))
    g = input_activation(clip(z_g))
    c = (c_prev if f is None else f * c_prev) + (g if i is None else i * g)
    if cell_input is not None:
        c = c + cell_input
    o = None if z_o is None else jax.nn.sigmoid(peep(z_o, peephole_o, c))
    m = output_activation(cell_output(c))
    h = m if o is None else o * m
    gates = {k: v for k, v in (("input", i), ("forget", f), ("candidate", g), ("output", o)) if v is not None}
    return h, c, gates


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


def masked_softmax(scores: Array, mask: Array | None = None) -> Array:
    r"""Softmax over the last axis that gives masked positions exactly zero weight.

    .. math::

        \alpha_j = \frac{m_j \exp(e_j - \max_{k: m_k} e_k)}{\sum_k m_k \exp(e_k - \max_{k: m_k} e_k)}

    Masked scores are replaced (``jnp.where``) before the exponential, so neither they nor
    their gradients can overflow, and the exponentials are zeroed with a second ``where``.
    A row with every position masked gets all-zero weights (its denominator is 0 and is
    replaced by 1), with zero gradients, never NaN; so does an empty memory (``S = 0``).

    Args:
      scores: ``[..., S]`` floating scores.
      mask: ``[..., S]`` boolean, ``True`` = attend; None attends everywhere.

    Returns:
      ``[..., S]`` weights in ``scores``' dtype.
    """
    if mask is None:
        return jax.nn.softmax(scores, axis=-1)
    fill = jnp.finfo(jnp.result_type(scores)).min  # the "-inf-like" score of a masked position
    top = jax.lax.stop_gradient(jnp.max(jnp.where(mask, scores, fill), axis=-1, keepdims=True, initial=fill))
    e = jnp.where(mask, jnp.exp(jnp.where(mask, scores, top) - top), jnp.zeros_like(scores))
    total = jnp.sum(e, axis=-1, keepdims=True)  # >= 1 unless every position is masked
    return e / jnp.where(total > 0, total, jnp.ones_like(total))


def tree_where(mask: Array, new, old):
    """``where(mask, new, old)`` leaf by leaf, ``mask [...]`` broadcast over each leaf's
    trailing axes (leaves ``[..., *]`` with the mask's shape in front)."""
    def pick(n, o):
        m = mask.reshape(mask.shape + (1,) * (jnp.ndim(n) - mask.ndim))
        return jnp.where(m, n, o)

    return jax.tree_util.tree_map(pick, new, old)


def tree_zeros_where_not(mask: Array, tree):
    """Leaves of ``tree`` (``[..., *]``) with entries where ``mask [...]`` is false set to zero."""
    return jax.tree_util.tree_map(lambda a: tree_where(mask, a, jnp.zeros_like(a)), tree)
