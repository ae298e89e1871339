"""The TF Serving model config file (`models.config`) of an export folder.

TF Serving serves several models from one process when it is started with
`--model_config_file=models.config`, a `ModelServerConfig` text protobuf with
one `config { name base_path model_platform }` entry per model. The file is
derived from what is on disk, so it always lists every model folder of the
export folder (each level of each exported model), and it is replaced
atomically, so a server polling it (`--model_config_file_poll_wait_seconds`)
never reads half a file.
"""

import os
import pathlib
import re
import uuid

from keras_unetpp.errors import InputError

CONFIG_FILE = "models.config"

_VERSION = re.compile(r"^\d+$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_model_name(model_name):
    """Raises a `ValueError` unless `model_name` is a safe folder/model name."""
    if not isinstance(model_name, str) or not _MODEL_NAME.match(model_name):
        raise InputError(
            "`model_name` must start with a letter or digit and hold only "
            "letters, digits, '_', '.' and '-' (it names folders and the "
            f"served model). Received: model_name={model_name!r}"
        )
    return model_name


def check_base_path(base_path):
    """Raises a `ValueError` unless `base_path` is None, absolute or a URL.

    TF Serving resolves a relative `base_path` against its own working
    directory, which is rarely the export's, so only absolute paths
    (`"/models"`) and storage URLs (`"gs://bucket/models"`) are accepted.
    """
    if base_path is None:
        return None
    text = str(base_path)
    if not (text.startswith("/") or _URL.match(text)):
        raise InputError(
            "`base_path` must be an absolute path as the server sees it (e.g. "
            "'/models' in the tensorflow/serving container) or a storage URL "
            f"(e.g. 'gs://bucket/models'). Received: base_path={base_path!r}"
        )
    return text


def versions(model_dir):
    """The version numbers of the complete SavedModels in a model folder.

    Args:
        model_dir: a folder such as `exported/unetpp_l2`.

    Returns:
        Sorted list of ints: the numeric sub-folders holding a
        `saved_model.pb`. Temporary folders of an export in progress are not
        numeric and are never listed.
    """
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if _VERSION.match(child.name) and (child / "saved_model.pb").is_file()
    )


def served_models(export_dir):
    """Names of the model folders in `export_dir` that hold a version."""
    export_dir = pathlib.Path(export_dir)
    if not export_dir.is_dir():
        return []
    return sorted(
        child.name
        for child in export_dir.iterdir()
        if child.is_dir() and _MODEL_NAME.match(child.name) and versions(child)
    )


def _quote(text):
    """Escapes a string for a double-quoted text-protobuf field."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def serving_config_text(export_dir, base_path=None):
    """The text of `models.config` for every model folder in `export_dir`.

    Args:
        export_dir: the export folder.
        base_path: the folder under which the server sees `export_dir`, e.g.
            `"/models"` when the folder is mounted there in the
            `tensorflow/serving` container. Defaults to `None`, the absolute
            path of `export_dir` on this machine.

    Returns:
        str, a `ModelServerConfig` text protobuf.
    """
    export_dir = pathlib.Path(export_dir)
    base_path = check_base_path(base_path)
    root = base_path if base_path is not None else str(export_dir.resolve())
    root = root.rstrip("/") or "/"
    lines = [
        "# TF Serving model config written by keras_unetpp.export: one entry",
        "# per exported model folder. Serve with",
        "#   tensorflow_model_server --model_config_file=<this file> ...",
        "model_config_list {",
    ]
    for name in served_models(export_dir):
        path = f"{root}/{name}" if root != "/" else f"/{name}"
        lines += [
            "  config {",
            f'    name: "{name}"',
            f'    base_path: "{_quote(path)}"',
            '    model_platform: "tensorflow"',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_serving_config(export_dir, base_path=None):
    """Writes `export_dir/models.config` atomically (temp file, then rename).

    Args:
        export_dir: the export folder.
        base_path: see `serving_config_text`. Defaults to `None`.

    Returns:
        The `pathlib.Path` of the config file.
    """
    export_dir = pathlib.Path(export_dir)
    path = export_dir / CONFIG_FILE
    temporary = export_dir / f".{CONFIG_FILE}.{uuid.uuid4().hex}.tmp"
    try:
        temporary.write_text(serving_config_text(export_dir, base_path))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path
