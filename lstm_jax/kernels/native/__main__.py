"""``python -m lstm_jax.kernels.native [--optional]``: builds the ``"native"`` form's extension
(:func:`lstm_jax.kernels.native_rnn.main`)."""

import sys

from lstm_jax.kernels.native_rnn import main

sys.exit(main())
