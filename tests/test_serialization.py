"""`.keras` save/load round trips, in a fresh process, in safe mode."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_unetpp

RELOAD_GRAPH = textwrap.dedent(
    """
    import sys, numpy as np, keras
    # The graph is core layers only: no keras_unetpp import, no custom objects.
    model = keras.saving.load_model(sys.argv[1], safe_mode=True)
    assert "keras_unetpp" not in sys.modules
    out = model.predict(np.load(sys.argv[3]), verbose=0)
    np.savez(sys.argv[4], **out)
    # The compiled model needs the package only for the loss and the metrics.
    import keras_unetpp
    compiled = keras.saving.load_model(sys.argv[2], safe_mode=True)
    loss = compiled.loss["output_l2"]
    metric_names = sorted(m.name for m in compiled.metrics)
    print("RESULT", type(loss).__name__, loss.from_logits, loss.smooth)
    x = np.load(sys.argv[3])
    y = (x[..., :1] > 0.5).astype("float32")
    logs = compiled.evaluate(x, {"output_l1": y, "output_l2": y}, verbose=0,
                             return_dict=True)
    print("LOGS", __import__("json").dumps({k: float(v) for k, v in logs.items()}))
    """
)


@pytest.mark.slow
def test_keras_file_reloads_in_fresh_process(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras_unetpp.build(
        depth=2,
        deep_supervision=True,
        input_shape=(None, None, 3),
        filters=(4, 8, 16),
        upsampling="resize",
        dropout=0.1,
    )
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    y = (x[..., :1] > 0.5).astype("float32")
    graph_path = tmp_path / "graph.keras"
    model.save(graph_path)
    model.compile(
        optimizer="adam",
        loss={
            "output_l1": keras_unetpp.BCEDiceLoss(),
            "output_l2": keras_unetpp.BCEDiceLoss(smooth=2.0),
        },
        metrics={
            "output_l2": [
                keras_unetpp.IoUScore(),
                keras_unetpp.DiceScore(average="per_image"),
            ]
        },
    )
    model.fit(x, {"output_l1": y, "output_l2": y}, epochs=1, verbose=0)
    expected_logs = model.evaluate(
        x, {"output_l1": y, "output_l2": y}, verbose=0, return_dict=True
    )
    compiled_path = tmp_path / "compiled.keras"
    model.save(compiled_path)
    # Reload the graph (saved before training) in this process too: same outputs.
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD_GRAPH,
            str(graph_path),
            str(compiled_path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1]
        for line in proc.stdout.splitlines()
        if line.startswith(("RESULT", "LOGS"))
    }
    assert lines["RESULT"] == "BCEDiceLoss False 2.0"
    logs = json.loads(lines["LOGS"])
    for key in ("loss", "output_l2_iou", "output_l2_dice_per_image"):
        assert abs(logs[key] - expected_logs[key]) < 1e-5, key
    # The graph saved before training, reloaded elsewhere, predicts exactly the same.
    untrained = keras.saving.load_model(graph_path)
    reloaded = np.load(tmp_path / "out.npz")
    direct = untrained.predict(x, verbose=0)
    for name in ("output_l1", "output_l2"):
        np.testing.assert_array_equal(reloaded[name], direct[name])


def test_pruned_and_accurate_models_save_and_reload(tmp_path):
    model = keras_unetpp.build(
        depth=3, deep_supervision=True, input_shape=(32, 32, 1), filters=(4, 8, 16, 32)
    )
    x = np.random.default_rng(2).random((1, 32, 32, 1), dtype=np.float32)
    for sub in (keras_unetpp.prune(model, 2), keras_unetpp.inference_model(model)):
        path = tmp_path / f"{sub.name}.keras"
        sub.save(path)
        again = keras.saving.load_model(path)
        np.testing.assert_array_equal(
            again.predict(x, verbose=0), sub.predict(x, verbose=0)
        )
        assert again.count_params() == sub.count_params()
