"""3D export: per-level SavedModels of a volume model, served as predicted.

The reference for every served output is the library's own prediction,
computed here independently of the serving graph: `predict_padded`
(NumPy reflect padding to the stride, `model.predict`, crop) for whole
volumes, `predict_volume` (NumPy sliding window) for tiled ones, after
`normalize_intensity` (NumPy, float64 statistics). The SavedModels are
reloaded in a fresh process that imports TensorFlow only.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from volume_helpers import ball_volume, write_dataset, write_nifti

import keras_unetpp as ku
from keras_unetpp import volumes
from keras_unetpp.cli import main as cli_main
from keras_unetpp.errors import InputError
from keras_unetpp.export import export_pruned, load_metadata
from keras_unetpp.export.volume_intensity import normalize_volumes
from keras_unetpp.size_policy import SizePolicy, pad_to_stride

ODD = (37, 41, 29)  # No axis a multiple of 4, the depth-2 stride.
TILE = (16, 16, 16)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    net = ku.build(
        depth=2,
        input_shape=(None, None, None, 1),
        filters=(4, 8, 16),
        num_classes=3,
        deep_supervision=True,
        normalization="batch",
    )
    # Non-trivial batch-norm statistics, so inference mode matters.
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.2, 0.3, channels))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, channels))
    return net


def _mri(shape, seed=0):
    """A volume in MRI-like raw units, far from mean 0 / sd 1."""
    image, _ = ball_volume(shape, [n // 2 for n in shape], 8, classes=3, seed=seed)
    return (image * 7.0 + 900.0)[None, ..., None].astype(np.float32)


_FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
jobs = json.loads(sys.argv[1])
for job in jobs:
    serve = tf.saved_model.load(job["model"]).signatures["serving_default"]
    out = serve(image=tf.constant(np.load(job["input"])))
    np.save(job["out"] + "_probabilities.npy", out["probabilities"].numpy())
    np.save(job["out"] + "_mask.npy", out["mask"].numpy())
    try:
        serve(image=tf.constant(np.load(job["input"])[0]))
    except tf.errors.InvalidArgumentError as error:
        with open(job["out"] + "_error.txt", "w") as f:
            f.write(error.message)
assert "keras_unetpp" not in sys.modules
print("fresh process ok")
"""


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("volume_export")
    whole = export_pruned(
        model, root / "whole", model_name="hip", intensity="zscore", accurate=True
    )
    tiled = export_pruned(
        model,
        root / "tiled",
        model_name="hip",
        levels=[1],
        intensity="zscore",
        tiling={"tile_size": TILE, "overlap": 0.5, "tta": "flips+rot90"},
    )
    volume = _mri(ODD)
    np.save(root / "odd.npy", volume)
    jobs = [
        {"model": str(path), "input": str(root / "odd.npy"), "out": str(root / f"{k}")}
        for k, path in whole.items()
    ]
    jobs.append(
        {
            "model": str(tiled[1]),
            "input": str(root / "odd.npy"),
            "out": str(root / "tiled_1"),
        }
    )
    # The environment of a server: TensorFlow alone, no keras_unetpp.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, json.dumps(jobs)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=600,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fresh process ok" in result.stdout
    return root, whole, tiled, volume


def test_served_volumes_match_prune_on_an_odd_shape(model, exported):
    root, whole, _, volume = exported
    assert sorted(whole, key=str) == [1, 2, "accurate"]
    normalized = volumes.normalize_intensity(volume[0], "zscore")[None]
    for key in whole:
        net = ku.inference_model(model) if key == "accurate" else ku.prune(model, key)
        expected = ku.predict_padded(net, normalized)
        probabilities = np.load(root / f"{key}_probabilities.npy")
        assert probabilities.shape == (1, *ODD, 3)
        assert np.abs(probabilities - expected).max() <= 2e-5
        mask = np.load(root / f"{key}_mask.npy")
        assert mask.shape == (1, *ODD, 1) and mask.dtype == np.uint8
        agree = mask[..., 0] == expected.argmax(-1)
        assert agree.mean() > 0.9999  # Only exact near-ties may differ.


def test_tiled_volume_serving_is_predict_volume(model, exported):
    root, _, _, volume = exported
    normalized = volumes.normalize_intensity(volume[0], "zscore")
    expected = volumes.predict_volume(
        ku.prune(model, 1), normalized, tile_size=TILE, overlap=0.5, tta="flips+rot90"
    )
    probabilities = np.load(root / "tiled_1_probabilities.npy")[0]
    assert probabilities.shape == (*ODD, 3)
    assert np.abs(probabilities - expected).max() <= 2e-5
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)


def test_served_volume_rejects_a_missing_batch_axis(exported):
    root, whole, _, _ = exported
    for key in whole:
        message = (root / f"{key}_error.txt").read_text()
        assert "image must be (batch, depth, height, width, 1)" in message
        assert "received rank 4" in message and "[37 41 29 1]" in message


def test_volume_metadata_describes_the_3d_input(model, exported):
    _, whole, tiled, _ = exported
    meta = load_metadata(whole[2])
    assert meta["input"]["shape"] == [None, None, None, None, 1]
    assert meta["input"]["layout"].startswith("NDHWC")
    assert meta["outputs"]["probabilities"]["shape"] == [None, None, None, None, 3]
    pruned = ku.prune(model, 2)
    assert meta["flops"]["per_volume"] == ku.count_flops(pruned, 64, 64, depth=64)
    assert meta["preprocessing"]["intensity"] == {
        "intensity": "zscore",
        "ct_window": None,
    }
    tiling = load_metadata(tiled[1])["tiling"]
    assert tiling["tile_size"] == list(TILE) and tiling["batch_size"] == 2


@pytest.mark.parametrize(
    "intensity, window",
    [
        ("zscore", None),
        ("zscore-nonzero", None),
        ("ct", (-200.0, 300.0)),
        ("none", None),
    ],
)
def test_in_graph_intensity_matches_numpy(intensity, window):
    rng = np.random.default_rng(1)
    batch = rng.normal(40.0, 120.0, (3, 6, 7, 5, 2)).astype(np.float32)
    batch[0, :2] = 0.0  # Background voxels for "zscore-nonzero".
    batch[2] = 0.0  # An all-zero volume.
    kwargs = {} if window is None else {"ct_window": window}
    got = normalize_volumes(tf.constant(batch), intensity, **kwargs).numpy()
    for index in range(len(batch)):
        expected = volumes.normalize_intensity(batch[index], intensity, **kwargs)
        np.testing.assert_allclose(got[index], expected, rtol=1e-5, atol=1e-5)


def test_volume_export_refuses_what_it_cannot_serve(model, tmp_path):
    with pytest.raises(InputError, match="SavedModels only"):
        export_pruned(model, tmp_path, formats="savedmodel,onnx")
    with pytest.raises(InputError, match="native size"):
        export_pruned(model, tmp_path, size_policy=SizePolicy.resize((32, 32)))
    with pytest.raises(InputError, match="goes with intensity='ct'"):
        export_pruned(model, tmp_path, intensity="zscore", ct_window=(0, 1))
    with pytest.raises(InputError, match="intensity"):
        export_pruned(model, tmp_path, intensity="hounsfield")
    with pytest.raises(InputError, match=r"\(depth, height, width\)"):
        export_pruned(model, tmp_path, tiling={"tile_size": (16, 16)})
    flat = ku.build(depth=1, filters=(4, 8))
    with pytest.raises(InputError, match="normalization of volumes"):
        export_pruned(flat, tmp_path, intensity="zscore")
    assert not any(tmp_path.iterdir())  # Nothing half-written.


@pytest.mark.slow
def test_cli_exports_a_volume_run_that_serves_predicts_labels(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", count=3, shape=(12, 16, 16))
    out = tmp_path / "run"
    cli_main(
        ["train", "--data", str(root), "--output", str(out), "--depth", "2"]
        + ["--filters", "4", "--num-classes", "3", "--patch-size", "8", "16", "16"]
        + ["--batch-size", "2", "--epochs", "1", "--verbose", "0"]
        + ["--no-tensorboard"]
    )
    capsys.readouterr()
    cli_main(["export", str(out), "--model-name", "hip"])
    printed = capsys.readouterr().out
    assert "L1:" in printed and "accurate:" in printed
    assert "tiled 8x16x16, overlap 0.5" in printed
    meta = load_metadata(out / "export" / "hip_l1" / "1")
    assert meta["training"]["kind"] == "volumes"
    assert meta["preprocessing"]["intensity"]["intensity"] == "zscore"
    # A new volume of odd size on the training grid (1 mm, no resampling).
    image, _ = ball_volume((13, 19, 21), (6, 9, 10), 6, classes=3, seed=9)
    (tmp_path / "new").mkdir()
    write_nifti(tmp_path / "new" / "odd.nii.gz", image)
    cli_main(["predict", str(out), str(tmp_path / "new"), "--level", "1"])
    import nibabel

    written = nibabel.load(str(out / "predictions" / "labels" / "odd.nii.gz"))
    predicted = np.transpose(np.asarray(written.dataobj), (2, 1, 0))
    serve = tf.saved_model.load(str(out / "export" / "hip_l1" / "1")).signatures[
        "serving_default"
    ]
    served = serve(image=tf.constant(image[None, ..., None]))["mask"].numpy()
    np.testing.assert_array_equal(served[0, ..., 0], predicted)
    with pytest.raises(SystemExit):
        cli_main(["export", str(out), "--format", "onnx", "--overwrite"])


def test_in_graph_padding_of_volumes_is_pad_to_multiple():
    rng = np.random.default_rng(2)
    for shape in ((1, 5, 6, 7, 2), (2, 3, 9, 4, 1), (1, 1, 2, 3, 1)):
        volume = rng.normal(size=shape).astype(np.float32)
        for stride in (2, 4, 8):
            padded, *sizes = pad_to_stride(tf.constant(volume), stride)
            expected, expected_sizes = ku.pad_to_multiple(volume, stride)
            np.testing.assert_array_equal(padded.numpy(), expected)
            assert tuple(int(n) for n in sizes) == expected_sizes
