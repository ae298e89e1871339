"""Atomic file writes: write aside, then rename into place.

A reader, or a run resumed after a kill, sees either the old file or the
complete new one, never a part of it. The new content is written to a hidden
temporary sibling in the same folder (the same file system, so that the
rename is atomic), `.<name>.tmp-<id><ext>` (the extension kept, because
Keras picks the format of `model.save`/`save_weights` from it), flushed to
disk (`fsync`), and renamed onto the target with `os.replace`; then the
folder is flushed so that the rename itself survives a power cut. On an
error the temporary is removed and the target is untouched. A kill
(SIGKILL) can leave a temporary behind; `remove_temporaries(folder)` deletes
them (`training.train` does so when it starts).

This is the file-level counterpart of the folder transaction of
`keras_unetpp.export` (staged hidden sibling, rename into place, roll back).
"""

import contextlib
import json
import os
import pathlib
import re
import uuid

_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{8}(\..+)?$")
# Extensions that Keras reads as one: `save_weights` needs ".weights.h5".
_DOUBLE_EXTENSIONS = (".weights.h5", ".weights.json")


def _extension(name):
    for extension in _DOUBLE_EXTENSIONS:
        if name.endswith(extension):
            return extension
    return pathlib.PurePath(name).suffix


def temporary_path(path):
    """A fresh hidden sibling of `path` with the same extension.

    Example: `run/best.keras` -> `run/.best.keras.tmp-1f3a9c02.keras`.
    """
    path = pathlib.Path(path)
    token = uuid.uuid4().hex[:8]
    return path.with_name(f".{path.name}.tmp-{token}{_extension(path.name)}")


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder):
    if not hasattr(os, "O_DIRECTORY"):  # Windows: no directory handles.
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # Some file systems refuse to fsync a directory.
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary path to write; on success it replaces `path`.

    Args:
        path: the file to replace (or create); its folder must exist.

    Example:

    ```python
    with atomic.replacing(run_dir / "best.keras") as tmp:
        model.save(tmp)
    ```
    """
    path = pathlib.Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_bytes(path, data):
    """Replaces the file `path` with `data` (bytes), atomically."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path, text, newline=None):
    """Replaces the file `path` with `text` (UTF-8), atomically."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as f:
        f.write(text)


def write_json(path, value, indent=None):
    """Replaces `path` with `value` as strict JSON (no NaN or Infinity).

    Raises:
        ValueError: `value` holds a NaN or infinite float (nothing is
            written).
    """
    text = json.dumps(value, indent=indent, allow_nan=False)
    write_text(path, text + "\n")


def save_model(model, path, **kwargs):
    """`model.save(path)` through a temporary `.keras` sibling, atomically."""
    with replacing(path) as tmp:
        model.save(tmp, **kwargs)


def save_weights(model, path):
    """`model.save_weights(path)` through a temporary sibling, atomically."""
    with replacing(path) as tmp:
        model.save_weights(tmp)


def remove_temporaries(folder):
    """Deletes the temporaries that a killed write left in `folder`.

    Returns:
        list of the paths removed.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if _TEMPORARY.match(path.name) and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
