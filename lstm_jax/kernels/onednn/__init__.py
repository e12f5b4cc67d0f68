"""The C++ source of the ``"onednn"`` form (``rnn.cc``) and its built library; see
:mod:`lstm_jax.kernels.onednn_rnn`."""
