"""Converters between lstm_jax layers and other frameworks.

:mod:`lstm_jax.interop.torch` maps ``torch.nn.RNN``/``LSTM``/``GRU`` modules (weights and
``h_n``/``c_n`` states) to and from lstm_jax stacks. It imports PyTorch only inside its
functions, so importing this package never needs PyTorch.
"""

from lstm_jax.interop.torch import carry_from_torch, carry_to_torch, from_torch, to_torch

__all__ = ["carry_from_torch", "carry_to_torch", "from_torch", "to_torch"]
