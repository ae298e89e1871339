"""Smoke test of benchmarks/train_benchmark.py in its --quick mode."""

import json
import os
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
    # and recomputing variants, and oneDNN capped at AVX2, where bfloat16
    # cannot run on an AVX-512 CPU); then the memory workers (float32: plain
    # and the two memory levers).
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
            "avx2_isa",
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
    cpu_line = stdout.splitlines()[1]
    assert cpu_line.startswith("CPU: ") and "; kind " in cpu_line
    assert "oneDNN on (" in cpu_line or "oneDNN off (" in cpu_line
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
        assert r["onednn"] in (True, False)
        assert r["cpu_kind"] in ("AVX-512 + AMX", "AVX-512", "AVX2", "other")
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
        r
        for r in records
        if r["record"] == "speed"
        and not r["deep_supervision"]
        and r["lever"] != "avx2_isa"
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


def test_a_configuration_that_cannot_run_is_skipped_with_its_reason(quick_run):
    stdout, records = quick_run
    capped = [r for r in records if r["record"] == "speed" and r["lever"] == "avx2_isa"]
    assert capped and all(r["precision"] == "mixed_bfloat16" for r in capped)
    if capped[0]["phase"] == "skipped":
        # oneDNN on and capped below AVX512_CORE: no bfloat16 convolution.
        (record,) = capped
        reason = record["error"]
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in reason
        assert "Received: precision='mixed_bfloat16'" in reason
        assert f"skipped: keras_unetpp +avx2_isa mixed_bfloat16: {reason}" in stdout
    else:
        # oneDNN off (or a CPU the cap does not concern): it runs, and is timed.
        assert sorted(r["phase"] for r in capped) == ["infer", "train"]
        assert all(r["images_per_s"] > 0 for r in capped)


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


def test_cpu_description_reads_cpuinfo(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cpu_info

    fake = tmp_path / "cpuinfo"
    fake.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma\n\nprocessor\t: 1\n"
        "model name\t: ignored\nflags\t\t: avx512f\n"
    )
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    described = cpu_info.describe_cpu(str(fake))
    assert described["model"] == "AMD EPYC 7B13"
    assert described["extensions"] == ["AVX2", "FMA"]
    assert described["kind"] == "AVX2"
    flags = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
    assert cpu_info.cpu_kind(flags) == "AVX-512 + AMX"
    assert cpu_info.cpu_kind(flags - {"amx_tile", "amx_bf16"}) == "AVX-512"
    assert cpu_info.cpu_kind(flags, "AVX2").startswith("AVX2 (oneDNN capped")
    assert cpu_info.cpu_kind({"sse4_2"}) == "other"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    line = cpu_info.summary(cpu_info.describe_cpu(str(fake)))
    assert line.startswith("CPU: AMD EPYC 7B13, ")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in line


def test_an_avx2_reproduction_caps_xla_too():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cpu_info

    env = cpu_info.cap_xla_like_onednn({"ONEDNN_MAX_CPU_ISA": "avx2"})
    assert env["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX2"
    kept = {"ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX"}
    assert cpu_info.cap_xla_like_onednn(dict(kept)) == kept  # the user's cap
    other = {"ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    assert cpu_info.cap_xla_like_onednn(other)["XLA_FLAGS"] == (
        "--xla_dump_to=/tmp/d --xla_cpu_max_isa=AVX2"
    )
    assert cpu_info.cap_xla_like_onednn({}) == {}  # no cap, nothing added
    line = cpu_info.summary(dict(cpu_info.describe_cpu(), xla_flags=env["XLA_FLAGS"]))
    assert line.endswith("; XLA_FLAGS=--xla_cpu_max_isa=AVX2")
    # XLA of this TensorFlow knows the flag (it aborts on unknown ones) and
    # compiles under it, with the same result as without.
    code = (
        "import numpy as np, tensorflow as tf;"
        "f = tf.function(lambda x: tf.nn.relu(x @ x) + 1.0, jit_compile=True);"
        "x = tf.constant(np.arange(16, dtype='float32').reshape(4, 4) / 8 - 1);"
        "print('SUM', float(tf.reduce_sum(f(x))))"
    )
    sums = []
    for flags in (env, {}):
        completed = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **flags},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        sums.append(completed.stdout.split("SUM")[-1].strip())
    assert sums[0] == sums[1]


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_op_profile_sums_a_real_trace(tmp_path, precision):
    """The per-op profile of a tiny training step: the convolutions and their
    gradients are found and attributed to the levels of their nodes."""
    out = tmp_path / "profile.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "op_profile.py"), "--quick"]
        + ["--precision", precision, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("CPU: ")
    assert "| conv fwd |" in completed.stdout
    assert f"batch 2, {precision}: step" in completed.stdout
    result = json.loads(out.read_text())
    assert result["precision"] == precision
    seconds = result["op_seconds_per_step"]
    for category in ("conv fwd", "conv bwd data", "conv bwd filter", "optimizer"):
        assert seconds[category] > 0, category
    # Depth 2: nodes at levels 0, 1 and 2 all have forward convolutions.
    for level in (0, 1, 2):
        assert result["by_level"][f"conv fwd|{level}"] > 0
    assert 0 < result["pct_of_peak"] < 100
    sys.path.insert(0, str(REPO / "benchmarks"))
    import op_profile

    assert op_profile.level_of("unetpp_1/x_2_1_conv1_1/convolution") == 2
    assert op_profile.level_of("unetpp_1/output_l1_logits_1/Add") is None
    grad = "gradient_tape/unetpp_1/x_0_1_conv1_1/convolution/Conv2DBackpropInput"
    assert op_profile.categorize(grad, "Conv2DBackpropInput") == "conv bwd data"
    up = "unetpp_1/x_0_1_up_1/conv_transpose"
    assert op_profile.categorize(up, "_MklNativeConv2DBackpropInput") == "up-conv fwd"
