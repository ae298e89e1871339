"""bfloat16 where TensorFlow's oneDNN cannot compute it: choice, errors, fallback.

Under `ONEDNN_MAX_CPU_ISA=AVX2` (how benchmarks reproduce a CPU without
AVX-512) oneDNN has no bfloat16 convolution: `--precision auto` must not
choose it, an explicit `mixed_bfloat16` must fail with a clear error before
anything is written, and a model trained in bfloat16 must still evaluate.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_unetpp
from keras_unetpp import cpu_bfloat16, precision, runs
from keras_unetpp.errors import InputError

CAPPED = "AVX2"


@pytest.fixture(autouse=True)
def _restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def test_isa_cap_reads_onednn_names_only():
    assert cpu_bfloat16.isa_cap({}) is None
    assert cpu_bfloat16.isa_cap({"ONEDNN_MAX_CPU_ISA": " avx2 "}) == (
        "ONEDNN_MAX_CPU_ISA",
        "AVX2",
    )
    # The older name, and the newer one first when both are set.
    assert cpu_bfloat16.isa_cap({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == (
        "DNNL_MAX_CPU_ISA",
        "AVX512_CORE",
    )
    both = {"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "AVX2"}
    assert cpu_bfloat16.isa_cap(both) == ("ONEDNN_MAX_CPU_ISA", "SSE41")
    # oneDNN ignores names it does not know, and ALL is no cap.
    assert cpu_bfloat16.isa_cap({"ONEDNN_MAX_CPU_ISA": "FOO"}) is None
    assert cpu_bfloat16.isa_cap({"ONEDNN_MAX_CPU_ISA": "ALL"}) is None


@pytest.mark.parametrize(
    "cap, onednn, native",
    [
        (None, True, True),
        ("AVX512_CORE_BF16", True, True),
        ("AVX512_CORE_AMX", True, True),
        ("AVX10_1_512", True, True),
        # Emulated (4.6x slower than float32 where measured) or absent.
        ("AVX512_CORE_VNNI", True, False),
        ("AVX512_CORE", True, False),
        ("AVX2", True, False),
        # Eigen's bfloat16 kernels: half the float32 speed where measured.
        (None, False, False),
    ],
)
def test_native_bfloat16_needs_onednn_and_no_low_cap(monkeypatch, cap, onednn, native):
    monkeypatch.setattr(cpu_bfloat16, "tensorflow_uses_onednn", lambda: onednn)
    environ = {} if cap is None else {"ONEDNN_MAX_CPU_ISA": cap}
    assert cpu_bfloat16.bfloat16_is_native(environ) is native


def test_auto_takes_float32_where_bfloat16_is_not_native(monkeypatch):
    monkeypatch.delenv("KERAS_UNETPP_PRECISION", raising=False)
    monkeypatch.setattr(precision, "accelerator", lambda: "cpu")
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: True)
    monkeypatch.setattr(cpu_bfloat16, "bfloat16_is_native", lambda: False)
    assert precision.resolve_precision("auto") == "float32"
    monkeypatch.setattr(cpu_bfloat16, "bfloat16_is_native", lambda: True)
    assert precision.resolve_precision("auto") == "mixed_bfloat16"


def test_tensorflow_reports_its_onednn_setting():
    # The suite runs both ways: oneDNN on by default here, off under
    # TF_ENABLE_ONEDNN_OPTS=0; the query follows TensorFlow's own setting.
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").lower()
    if setting in ("0", "false"):
        assert not cpu_bfloat16.tensorflow_uses_onednn()
    elif setting in ("1", "true"):
        assert cpu_bfloat16.tensorflow_uses_onednn()


def test_short_message_keeps_onednn_sentence():
    text = (
        "{{function_node __wrapped__}} Operation received an exception:Status: "
        "3, message: could not create a primitive descriptor for the "
        "convolution forward propagation primitive. Run workload with "
        "ONEDNN_VERBOSE=all, in file mkl_conv_ops.cc:1112 [Op:Conv2D]"
    )
    assert cpu_bfloat16._short_message(text) == (
        "could not create a primitive descriptor for the convolution forward "
        "propagation primitive"
    )
    assert cpu_bfloat16._short_message("other\nlines") == "other"


def _fake_capped_cpu(monkeypatch):
    """This process as if oneDNN were capped at AVX2 (its convolutions fail)."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", CAPPED)
    monkeypatch.setattr(precision, "accelerator", lambda: "cpu")
    monkeypatch.setattr(
        cpu_bfloat16,
        "_bfloat16_convolution_error",
        lambda: "could not create a primitive descriptor",
    )


def test_explicit_bfloat16_fails_clearly_where_it_cannot_run(monkeypatch):
    _fake_capped_cpu(monkeypatch)
    keras.config.set_dtype_policy("float32")
    with pytest.raises(InputError) as raised:
        precision.set_precision("mixed_bfloat16")
    message = str(raised.value)
    for part in (
        "ONEDNN_MAX_CPU_ISA=AVX2",
        "below AVX512_CORE",
        "could not create a primitive descriptor",
        "--precision float32",
        "TF_ENABLE_ONEDNN_OPTS=0",
        "Received: precision='mixed_bfloat16'",
    ):
        assert part in message
    # Nothing was changed, and the other policies are still fine.
    assert keras.config.dtype_policy().name == "float32"
    assert precision.set_precision("mixed_float16") == "mixed_float16"


def _bfloat16_model():
    with precision.precision_scope("mixed_bfloat16"):
        return keras_unetpp.build(
            2, (32, 32, 1), filters=(4, 8, 16), deep_supervision=True
        )


def test_cast_model_computes_as_a_float32_build():
    model = _bfloat16_model()
    assert precision.conv_compute_dtypes(model) == ["bfloat16"]
    cast = precision.cast_model(model, "float32")
    assert precision.conv_compute_dtypes(cast) == ["float32"]
    # The model given keeps its policy.
    assert precision.conv_compute_dtypes(model) == ["bfloat16"]
    with precision.precision_scope("float32"):
        reference = keras_unetpp.build(
            2, (32, 32, 1), filters=(4, 8, 16), deep_supervision=True
        )
    reference.set_weights(model.get_weights())
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype="float32")
    got, want = cast(x), reference(x)
    assert sorted(got) == sorted(want)
    for name in want:
        # Same arithmetic; oneDNN may order the sums differently per call.
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    # bfloat16's rounding only: the original model is close, not equal.
    low = model(x)
    for name in want:
        difference = np.abs(np.asarray(low[name]) - np.asarray(want[name]))
        assert 0 < difference.max() < 0.05


def test_a_bfloat16_run_evaluates_in_float32_where_bfloat16_cannot_run(
    monkeypatch, tmp_path
):
    model = _bfloat16_model()
    model.save(tmp_path / "best.keras")
    _fake_capped_cpu(monkeypatch)
    with pytest.warns(RuntimeWarning, match="Computing it in float32 instead"):
        loaded = runs.load_run_model(tmp_path)
    assert precision.conv_compute_dtypes(loaded) == ["float32"]
    assert sorted(loaded.output_names) == sorted(model.output_names)
    # Where bfloat16 runs, the loaded model keeps it.
    monkeypatch.setattr(cpu_bfloat16, "_bfloat16_convolution_error", lambda: None)
    assert precision.conv_compute_dtypes(runs.load_run_model(tmp_path)) == ["bfloat16"]


_CAPPED_CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    from keras_unetpp import precision, runs
    from keras_unetpp.errors import InputError

    report = {"auto": precision.resolve_precision("auto")}
    report["reason"] = precision.bfloat16_unavailable_reason()
    try:
        precision.set_precision("mixed_bfloat16")
        report["explicit"] = "ok"
    except InputError as error:
        report["explicit"] = str(error)
    precision.set_precision("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = runs.load_run_model(sys.argv[1])
    report["warned"] = [str(w.message) for w in caught]
    report["dtypes"] = precision.conv_compute_dtypes(model)
    x = np.load(sys.argv[2])
    outputs = model.predict(x, verbose=0)
    np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in outputs.items()})
    print("REPORT", json.dumps(report))
    """
)


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="ONEDNN_MAX_CPU_ISA names x86 instruction sets",
)
def test_under_a_real_avx2_cap_auto_is_float32_and_bfloat16_runs_evaluate(tmp_path):
    model = _bfloat16_model()
    model.save(tmp_path / "best.keras")
    x = np.random.default_rng(1).random((2, 32, 32, 1), dtype="float32")
    np.save(tmp_path / "x.npy", x)
    float32 = precision.cast_model(model, "float32")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=CAPPED, TF_ENABLE_ONEDNN_OPTS="1")
    env.pop("KERAS_UNETPP_PRECISION", None)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _CAPPED_CHILD,
            str(tmp_path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "out.npz"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [r for r in result.stdout.splitlines() if r.startswith("REPORT ")][-1]
    report = json.loads(line[len("REPORT ") :])
    # Under the cap bfloat16 is never native, whatever the CPU.
    assert report["auto"] == "float32"
    outputs = np.load(tmp_path / "out.npz")
    if report["reason"] is None:
        # This TensorFlow computes bfloat16 by other kernels under the cap:
        # then everything runs in bfloat16, as trained.
        assert report["explicit"] == "ok"
        assert report["dtypes"] == ["bfloat16"] and not report["warned"]
        want = model.predict(x, verbose=0)
        tolerance = 0.05
    else:
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in report["reason"]
        assert report["explicit"].startswith("The precision 'mixed_bfloat16'")
        assert report["dtypes"] == ["float32"]
        assert any("in float32 instead" in w for w in report["warned"])
        want = float32.predict(x, verbose=0)
        tolerance = 1e-5
    assert sorted(outputs.files) == sorted(want)
    for name in want:
        np.testing.assert_allclose(outputs[name], want[name], atol=tolerance)
