"""Imported first by `keras_unetpp/__init__.py`: a quiet start of the CLI.

In the `keras-unetpp` command only, TensorFlow is imported here, before Keras
imports it, with its harmless start-up lines filtered from stderr; see
`keras_unetpp/quiet_start.py`. Elsewhere this does nothing.
"""

from keras_unetpp.quiet_start import quiet_cli_start

quiet_cli_start()
