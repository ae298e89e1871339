"""A run killed while it writes a file keeps files that load, and resumes.

`best.keras`, `last.keras`, `run.json`, `history.csv` and the state are
written aside and renamed into place (keras_unetpp.atomic). The test kills
a training child process (SIGKILL) while it writes each of them, with every
write slowed down (tests/slow_write_child.py) so that the kill lands in the
middle of the file, and checks after each kill that every file there is
complete; then the same command finishes the run.
"""

import csv
import json
import math
import os
import pathlib
import random
import subprocess
import sys
import time

import cli_helpers
import keras
import pytest

from keras_unetpp import atomic, cli, training

CHILD = pathlib.Path(__file__).with_name("slow_write_child.py")
TINY = cli_helpers.TINY


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _check_run_folder(run):
    """Every file of the run folder is complete (or absent)."""
    for name in ("best.keras", "last.keras"):
        if (run / name).exists():
            keras.saving.load_model(run / name, compile=False)
    if (run / "run.json").exists():
        assert "training" in _strict_json(run / "run.json")
    if (run / "history.csv").exists():
        with open(run / "history.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert all(None not in row and None not in row.values() for row in rows)
        assert [r["epoch"] for r in training.read_history(run)] == list(
            range(len(rows))
        )
    if (run / "state" / "state.json").exists():
        state = _strict_json(run / "state" / "state.json")
        assert (run / "state" / state["weights"]).is_file()


def _kill_while_writing(argv, run, target, log, seed):
    """Starts the child, SIGKILLs it just after it opens `target`; the path hit."""
    env = dict(
        os.environ,
        SLOW_WRITE_DIR=str(run),
        SLOW_WRITE_LOG=str(log),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    with open(log.with_suffix(".out"), "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(CHILD), *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    hit = None
    try:
        end = time.monotonic() + 300
        while hit is None and time.monotonic() < end and process.poll() is None:
            if log.exists():
                hit = next(
                    (
                        line
                        for line in log.read_text().splitlines()
                        if target in pathlib.Path(line).name
                    ),
                    None,
                )
            time.sleep(0.005)
        if hit is not None:
            time.sleep(random.Random(seed).uniform(0.0, 0.03))
    finally:
        process.kill()  # SIGKILL: no cleanup of any kind in the child
        process.wait()
    assert hit is not None, log.with_suffix(".out").read_text()[-3000:]
    return hit


@pytest.mark.slow
def test_a_kill_during_any_save_leaves_complete_files(tmp_path):
    data = tmp_path / "data"
    assert (
        cli.main(
            ["synthetic", str(data), "--num-images", "12", "--image-size", "32", "32"]
        )
        == 0
    )
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(data),
        "--output",
        str(run),
        "--epochs",
        "3",
        "--lr-schedule",
        "cosine",
        "--save-every",
        "1",
        "--no-tensorboard",
        *TINY,
    ]
    # In the order the files are first written: each try resumes the last.
    targets = ["run.json", "state.json", "best.keras", "history.csv", "last.keras"]
    for seed, target in enumerate(targets):
        hit = _kill_while_writing(argv, run, target, tmp_path / f"{target}.log", seed)
        assert target in hit
        _check_run_folder(run)
    assert cli.main(argv) == 0  # the same command, not slowed: it finishes
    _check_run_folder(run)
    assert [r["epoch"] for r in training.read_history(run)] == [0, 1, 2]
    model = keras.saving.load_model(run / "last.keras")
    steps = math.ceil(_strict_json(run / "run.json")["data"]["train_images"] / 4)
    assert int(model.optimizer.iterations) == 3 * steps  # none lost, none twice
    # No temporaries are left behind: train() removes those of killed writes.
    for folder in (run, run / "state"):
        assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    path = tmp_path / "run.json"
    atomic.write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        atomic.write_json(path, {"a": float("nan")})
    with pytest.raises(RuntimeError):
        with atomic.replacing(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert _strict_json(path) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert atomic.temporary_path(tmp_path / "best.keras").name.endswith(".keras")
    weights = atomic.temporary_path(tmp_path / "w.weights.h5").name
    assert weights.startswith(".w.weights.h5.tmp-") and weights.endswith(".weights.h5")
    # What a kill leaves behind is removed, nothing else.
    (tmp_path / ".best.keras.tmp-0123abcd.keras").write_text("partial")
    (tmp_path / ".hidden").write_text("keep")
    removed = atomic.remove_temporaries(tmp_path)
    assert [p.name for p in removed] == [".best.keras.tmp-0123abcd.keras"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "run.json"]
