"""One bad file among good ones: one line, exit status 2, no hang, no abort.

Issue 13: a truncated, empty, NaN or wrong-sized file (or a mask that does
not fit `num_classes`) made `keras-unetpp train` print a traceback and then
hang, abort (`terminate called without an active exception`) or exit 1.
Every file is now checked before any tf.data iterator exists. The command
runs in subprocesses, several times per case, because the failures were
intermittent.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import tifffile

REPO = pathlib.Path(__file__).resolve().parents[1]
# Far above a normal run (10-30 s, three side by side on 2 busy cores):
# only a hang reaches it.
TIMEOUT = 240
RUNS = 3
BAD = "003"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    """8 good 64x64 PNG pairs in images/ and masks/."""
    root = tmp_path_factory.mktemp("good")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(8):
        image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[8 + k : 40 + k, 16:48] = 255
        cv2.imwrite(str(root / "images" / f"{k:03d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{k:03d}.png"), mask)
    return root


def _truncated_image(root):
    path = root / "images" / f"{BAD}.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, {}


def _empty_image(root):
    path = root / "images" / f"{BAD}.png"
    path.write_bytes(b"")
    return path, {}


def _empty_mask(root):
    path = root / "masks" / f"{BAD}.png"
    path.write_bytes(b"")
    return path, {}


def _nan_tiff_image(root):
    (root / "images" / f"{BAD}.png").unlink()
    path = root / "images" / f"{BAD}.tif"
    image = np.full((64, 64), 0.5, np.float32)
    image[10:12, 20] = np.nan
    tifffile.imwrite(str(path), image)
    return path, {"message": "2 NaN pixels"}


def _wrong_size_mask(root):
    path = root / "masks" / f"{BAD}.png"
    cv2.imwrite(str(path), np.zeros((48, 64), np.uint8))
    return path, {"message": "64x48 (width x height)"}


def _six_valued_mask(root):
    path = root / "masks" / f"{BAD}.png"
    cv2.imwrite(str(path), (np.arange(64 * 64).reshape(64, 64) % 6).astype(np.uint8))
    return path, {"message": "values 0, 1, 2, 3, 4, 5, which do not fit num_classes=1"}


CASES = {
    "truncated_image": _truncated_image,
    "empty_image": _empty_image,
    "empty_mask": _empty_mask,
    "nan_tiff_image": _nan_tiff_image,
    "wrong_size_mask": _wrong_size_mask,
    "mask_values_0_to_5": _six_valued_mask,
}


def _bad_copy(good_dir, root, case):
    shutil.copytree(good_dir, root)
    path, expected = CASES[case](root)
    return root, str(path), expected


@pytest.fixture(params=sorted(CASES))
def bad_dir(request, good_dir, tmp_path):
    return _bad_copy(good_dir, tmp_path / "data", request.param)


def _run_side_by_side(commands, tmp_path):
    """Runs commands at once; returns `(status, stdout, stderr)` of each.

    Output goes to files, so that no child blocks on a full pipe while
    another one is waited for.
    """
    processes = []
    for k, command in enumerate(commands):
        out = open(tmp_path / f"stdout{k}.txt", "w")
        err = open(tmp_path / f"stderr{k}.txt", "w")
        with out, err:
            processes.append(
                subprocess.Popen(command, stdout=out, stderr=err, text=True, env=_env())
            )
    results = []
    for k, process in enumerate(processes):
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
                other.wait()
            pytest.fail(
                f"{commands[k]} hung (no exit in {TIMEOUT} s); stderr ends: "
                + (tmp_path / f"stderr{k}.txt").read_text()[-3000:]
            )
        results.append(
            (
                process.returncode,
                (tmp_path / f"stdout{k}.txt").read_text(),
                (tmp_path / f"stderr{k}.txt").read_text(),
            )
        )
    return results


def _last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.slow
def test_train_on_a_bad_file_gives_one_line_and_status_2(bad_dir, tmp_path):
    root, bad_path, expected = bad_dir
    command = [
        sys.executable,
        "-m",
        "keras_unetpp",
        "train",
        "--data",
        str(root),
        "--image-size",
        "32",
        "32",
        "--depth",
        "2",
        "--filters",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--verbose",
        "0",
    ]
    # The runs go side by side: the failures were timing-dependent.
    results = _run_side_by_side(
        [command + ["--output", str(tmp_path / f"run{k}")] for k in range(RUNS)],
        tmp_path,
    )
    for returncode, _, stderr in results:
        last = _last_line(stderr)
        assert returncode == 2, f"status {returncode}; stderr ends: {stderr[-2000:]}"
        assert "Traceback" not in stderr
        assert "terminate called" not in stderr
        assert last.startswith("keras-unetpp train: error: "), last
        assert bad_path in last
        assert expected.get("message", "") in last
    assert not any((tmp_path / f"run{k}").exists() for k in range(RUNS))


CHILD = textwrap.dedent(
    """
    import sys
    from keras_unetpp import data
    from keras_unetpp.errors import DataError

    for root in sys.argv[1:]:
        pairs = data.folder_pairs(root + "/images", root + "/masks")
        try:
            data.make_dataset(pairs, image_size=(32, 32), batch_size=4, training=True)
        except DataError as e:
            print(root, "DataError path=" + e.path, "message=" + str(e))
        else:
            print(root, "no error")
    """
)


def test_library_raises_data_error_with_the_path_and_exits_cleanly(good_dir, tmp_path):
    # One child for all cases: one TensorFlow start-up instead of six.
    cases = {case: _bad_copy(good_dir, tmp_path / case, case) for case in sorted(CASES)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *(str(root) for root, _, _ in cases.values())],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "terminate called" not in result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for case, (root, bad_path, expected) in cases.items():
        line = lines[str(root)]
        assert line.startswith(f"DataError path={bad_path} message="), (case, line)
        assert bad_path in line.split(" message=", 1)[1]
        assert expected.get("message", "") in line


FIT_CHILD = textwrap.dedent(
    f"""
    import faulthandler
    import sys

    # On a hang: every thread's stack on stderr, then exit status 1.
    faulthandler.dump_traceback_later({TIMEOUT - 30}, exit=True)
    import keras
    from keras_unetpp import data
    from keras_unetpp.data import pipeline
    from keras_unetpp.errors import DataError

    pipeline.MEMORY_LIMIT = 0  # Decode from the files while training.
    root = sys.argv[1]
    pairs = data.folder_pairs(root + "/images", root + "/masks")
    ds = data.make_dataset(
        pairs, image_size=(32, 32), batch_size=2, training=True, cache=False
    )
    bad = root + "/images/005.png"
    with open(bad, "rb") as f:
        head = f.read(60)
    with open(bad, "wb") as f:  # Breaks after the check.
        f.write(head)
    model = keras.Sequential(
        [keras.Input((32, 32, 1)), keras.layers.Conv2D(1, 3, padding="same")]
    )
    model.compile("adam", "mse")
    try:
        with data.data_errors():
            model.fit(ds, epochs=2, verbose=0)
    except DataError as e:
        print("DataError path=" + e.path)
    else:
        print("no error")
    """
)


@pytest.mark.slow
def test_a_file_broken_during_fit_is_a_data_error_and_the_process_exits(
    good_dir, tmp_path
):
    roots = [tmp_path / f"data{k}" for k in range(RUNS)]
    for root in roots:
        shutil.copytree(good_dir, root)
    results = _run_side_by_side(
        [[sys.executable, "-c", FIT_CHILD, str(root)] for root in roots], tmp_path
    )
    for root, (returncode, stdout, stderr) in zip(roots, results):
        assert returncode == 0, stderr[-4000:]
        assert f"DataError path={root}/images/005.png\n" in stdout
