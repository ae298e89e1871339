"""Imported first by `keras_unetpp/__init__.py`: the CLI's TensorFlow start.

In the `keras-unetpp` command only, before Keras imports TensorFlow: oneDNN
is asked for where TensorFlow leaves it off (`keras_unetpp/onednn.py`;
never against the user's own `TF_ENABLE_ONEDNN_OPTS`), then TensorFlow is
imported with its harmless start-up lines filtered from stderr
(`keras_unetpp/quiet_start.py`). Elsewhere this does nothing.
"""

from keras_unetpp.onednn import enable_onednn
from keras_unetpp.quiet_start import launched_as_cli, quiet_start

if launched_as_cli():
    enable_onednn()
    quiet_start()
