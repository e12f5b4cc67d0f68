"""The C++ source of the ``"native"`` form (``lstm.cc``) and its built library; see
:mod:`lstm_jax.kernels.native_rnn`."""
