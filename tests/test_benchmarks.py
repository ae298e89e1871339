"""Smoke test of benchmarks/train_benchmark.py in its --quick mode."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "train_benchmark.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    json_path = tmp_path_factory.mktemp("bench") / "results.jsonl"
    # Depth 1 with deep supervision: two workers (float32 and
    # mixed_bfloat16) side by side; the lever group in mixed_bfloat16 (the
    # plain model without deep supervision beside its Keras-batch-norm
    # and recomputing variants); then the memory workers (float32: plain and
    # both levers).
    # Without oneDNN (TF_ENABLE_ONEDNN_OPTS=0; CPUs without AVX-512), bfloat16
    # runs some 20x slower: measured 1.5 minutes of CPU, 5 on a busy machine.
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--depths",
            "1",
            "--modes",
            "ds",
            "--levers",
            "keras_bn",
            "recompute",
            "--lever-precisions",
            "mixed_bfloat16",
            "--json",
            str(json_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    records = [json.loads(line) for line in json_path.read_text().splitlines()]
    return completed.stdout, records


def test_prints_the_tables(quick_run):
    stdout, _ = quick_run
    assert stdout.startswith("Machine: ")
    assert "| model" in stdout
    for header in (
        "img/s",
        "GFLOP/s",
        "% peak",
        "TF allocator peak MB",
        "peak RSS MB",
        "ratio (paired, same rounds)",
    ):
        assert header in stdout


def test_speed_records(quick_run):
    _, records = quick_run
    speed = [r for r in records if r["record"] == "speed" and r["deep_supervision"]]
    # Two configurations, each with training and the inference modes
    # accurate, L1 (the depth-1 model has one head only).
    modes = sorted((r["precision"], r["mode"]) for r in speed)
    assert modes == [
        ("float32", "L1"),
        ("float32", "accurate"),
        ("float32", "train"),
        ("mixed_bfloat16", "L1"),
        ("mixed_bfloat16", "accurate"),
        ("mixed_bfloat16", "train"),
    ]
    for r in speed:
        assert r["steps"] == 3
        assert r["images_per_s"] > 0 and r["gflops"] > 0 and r["pct_of_peak"] > 0
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        factor = 3 if r["phase"] == "train" else 1
        assert r["gflops"] == pytest.approx(
            factor * r["gflop_per_image"] * r["images_per_s"]
        )
    train = [r for r in speed if r["phase"] == "train"]
    # Same model in both precisions: same parameters and FLOPs.
    assert train[0]["params"] == train[1]["params"]
    assert train[0]["gflop_per_image"] == train[1]["gflop_per_image"]


def test_lever_records(quick_run):
    _, records = quick_run
    levers = [
        r for r in records if r["record"] == "speed" and not r["deep_supervision"]
    ]
    assert sorted((r["lever"] or "plain", r["phase"]) for r in levers) == [
        ("keras_bn", "infer"),
        ("keras_bn", "train"),
        ("plain", "infer"),
        ("plain", "train"),
        ("recompute", "infer"),
        ("recompute", "train"),
    ]
    assert {r["precision"] for r in levers} == {"mixed_bfloat16"}
    # The same network either way: same parameters and FLOPs.
    assert len({(r["params"], r["gflop_per_image"]) for r in levers}) == 1
    ratios = {r["ratio"]: r["value"] for r in records if r["record"] == "ratio"}
    for lever in ("keras_bn", "recompute"):
        for phase in ("training", "inference"):
            name = (
                f"lever speed-up (keras_unetpp +{lever}) / plain, d1 "
                f"mixed_bfloat16, {phase}"
            )
            assert ratios[name] > 0


def test_memory_and_ratio_records(quick_run):
    _, records = quick_run
    memory = [r for r in records if r["record"] == "memory"]
    assert [(r["precision"], r["lever"]) for r in memory] == [
        ("float32", None),
        ("float32", "keras_bn"),
        ("float32", "recompute"),
    ]
    for r in memory:
        assert r["allocator_peak_mb"] > 0
        assert r["max_rss_mb"] > r["allocator_peak_mb"]
    ratios = {r["ratio"] for r in records if r["record"] == "ratio"}
    assert "training speed-up mixed_bfloat16 / float32, d1 DS" in ratios
    assert "accurate / L1 inference time, d1 DS, float32" in ratios
    machine = [r for r in records if r["record"] == "machine"]
    assert len(machine) == 1 and machine[0]["tensorflow_version"]


def test_gpu_check_says_when_there_is_no_gpu():
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--require-gpu",
            "--skip-speed",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 3:
        # A machine with a GPU: the check ran there and said how it went.
        assert "GPU check passed on GPU." in completed.stdout, completed.stderr[-2000:]
        return
    assert "No GPU found by TensorFlow: the GPU check was not run." in completed.stdout
