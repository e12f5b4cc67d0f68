"""``python -m lstm_jax.kernels.onednn [--optional]``: builds the ``"onednn"`` form's extension
(:func:`lstm_jax.kernels.onednn_rnn.main`)."""

import sys

from lstm_jax.kernels.onednn_rnn import main

sys.exit(main())
