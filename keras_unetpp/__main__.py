"""`python -m keras_unetpp` runs the `keras-unetpp` command."""

import sys

from keras_unetpp.cli import main

if __name__ == "__main__":
    sys.exit(main())
