"""Runs `keras-unetpp ARGS` with every file write under a folder slowed down.

A helper of test_atomic_saves.py. Each `open()` for writing of a file under
`$SLOW_WRITE_DIR` is logged (a line with the path, in `$SLOW_WRITE_LOG`),
and every `write()` to it goes out in 4 KiB pieces with a sleep after each,
so that a SIGKILL sent a moment after the open lands while the file is
being written.

Usage: SLOW_WRITE_DIR=RUN SLOW_WRITE_LOG=LOG python slow_write_child.py ARGS
"""

import builtins
import io
import os
import sys
import time

SLOW_DIR = os.path.abspath(os.environ["SLOW_WRITE_DIR"])
LOG = os.environ["SLOW_WRITE_LOG"]
DELAY = float(os.environ.get("SLOW_WRITE_DELAY", "0.01"))
CHUNK = 4096
_open = builtins.open


class _SlowFile:
    """A file whose writes are slow; everything else is the file's own."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        for start in range(0, len(data), CHUNK):
            self._f.write(data[start : start + CHUNK])
            self._f.flush()
            time.sleep(DELAY)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._f.__exit__(*exc_info)


def _slow_open(file, mode="r", *args, **kwargs):
    f = _open(file, mode, *args, **kwargs)
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        path = os.path.abspath(os.fsdecode(file))
        if path.startswith(SLOW_DIR + os.sep):
            with _open(LOG, "a") as log:
                log.write(path + "\n")
            return _SlowFile(f)
    return f


if __name__ == "__main__":
    builtins.open = _slow_open
    io.open = _slow_open
    from keras_unetpp import cli

    sys.exit(cli.main(sys.argv[1:]))
