"""Tests of keras_unetpp.precision: policy choice, setting, float32 outputs."""

import keras
import numpy as np
import pytest

import keras_unetpp
from keras_unetpp import precision


@pytest.fixture(autouse=True)
def _restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("name", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_set_precision_sets_the_global_policy(name):
    assert precision.set_precision(name) == name
    assert keras.config.dtype_policy().name == name


def test_bad_precision_raises():
    with pytest.raises(ValueError, match="Received: precision='float16'"):
        precision.set_precision("float16")


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("KERAS_UNETPP_PRECISION", "float32")
    assert precision.resolve_precision("auto") == "float32"
    monkeypatch.setenv("KERAS_UNETPP_PRECISION", "half")
    with pytest.raises(ValueError, match="KERAS_UNETPP_PRECISION='half'"):
        precision.resolve_precision("auto")


def test_auto_follows_the_device(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_UNETPP_PRECISION", raising=False)
    monkeypatch.setattr(precision, "accelerator", lambda: "gpu")
    assert precision.resolve_precision() == "mixed_float16"
    monkeypatch.setattr(precision, "accelerator", lambda: "tpu")
    assert precision.resolve_precision() == "mixed_bfloat16"
    monkeypatch.setattr(precision, "accelerator", lambda: "cpu")
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: False)
    assert precision.resolve_precision() == "float32"
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: True)
    # Native bfloat16 that the backend uses (see test_cpu_bfloat16.py).
    monkeypatch.setattr(precision.cpu_bfloat16, "bfloat16_is_native", lambda: True)
    assert precision.resolve_precision() == "mixed_bfloat16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    with_bf16 = tmp_path / "bf16"
    with_bf16.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    without = tmp_path / "plain"
    without.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert precision.cpu_has_bfloat16(str(with_bf16))
    assert not precision.cpu_has_bfloat16(str(without))
    assert not precision.cpu_has_bfloat16(str(tmp_path / "missing"))


def test_scope_restores_the_previous_policy():
    keras.config.set_dtype_policy("float32")
    with pytest.raises(RuntimeError):
        with precision.precision_scope("mixed_bfloat16") as name:
            assert name == "mixed_bfloat16"
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("name", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_models_compute_in_16_bits_and_output_float32(name):
    with precision.precision_scope(name):
        model = keras_unetpp.build(2, (32, 32, 1), deep_supervision=True)
    half = name.split("_")[1]
    assert model.get_layer("x_0_1_conv1").compute_dtype == half
    # Variables stay float32 under mixed policies.
    assert model.get_layer("x_0_1_conv1").kernel.dtype == "float32"
    outputs = model(np.zeros((1, 32, 32, 1), "float32"))
    dtypes = {k: keras.backend.standardize_dtype(v.dtype) for k, v in outputs.items()}
    assert dtypes == {
        "output_l1": "float32",
        "output_l2": "float32",
    }
    model.compile(optimizer="adam", loss=keras_unetpp.BCEDiceLoss())
    # mixed_float16 needs loss scaling, which compile() adds by itself.
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (name == "mixed_float16")


def test_train_run_resolves_auto_once_and_records_the_policy(tmp_path):
    import json

    from keras_unetpp import runs, sources
    from keras_unetpp.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", num_images=8, image_size=(16, 16))
    before = keras.config.dtype_policy().name
    runs.train_run(
        tmp_path / "run",
        sources.data_source(data_dir=data),
        depth=1,
        filters=2,
        image_size=(16, 16),
        batch_size=4,
        epochs=1,
        steps_per_epoch=1,
        precision="auto",
        tensorboard=False,
        verbose=0,
    )
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["training"]
    assert recorded["precision"] == "auto"
    assert recorded["precision_policy"] == precision.resolve_precision("auto")
    # The one precision path restores the global policy afterwards.
    assert keras.config.dtype_policy().name == before
