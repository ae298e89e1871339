"""Loads a Python file that is not part of the package as a module."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_module(path, name=None):
    """A script, benchmark or client file, imported under `name`.

    Args:
        path: the file, absolute or relative to the repository root.
        name: the module name. Defaults to the file's stem.

    Returns:
        The executed module.
    """
    path = REPO / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
