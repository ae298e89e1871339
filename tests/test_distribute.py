"""Tests of keras_unetpp.distribute.

The argument and TF_CONFIG errors run in this process. The strategies run in
processes of their own, because TensorFlow fixes its devices and its cluster
when its runtime starts: MirroredStrategy on two logical CPU devices
(tests/distribute_mirrored_checks.py) and MultiWorkerMirroredStrategy with
two worker processes on 127.0.0.1 (tests/distribute_worker.py).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_unetpp import BCEDiceLoss, CategoricalCEDiceLoss, IoUScore, build, distribute

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.distribute strategies run on the TensorFlow backend only",
)

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
TIMEOUT_S = 300
TINY = dict(depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16))
TWO_WORKERS = {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]}


def _env(**extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


# --- strategy names and arguments -------------------------------------------


def test_default_strategy_has_one_replica_and_is_chief():
    strategy = distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert distribute.is_chief(strategy)


@pytest.mark.parametrize(
    "cluster, task, chief",
    [
        (TWO_WORKERS, {"type": "worker", "index": 0}, True),
        (TWO_WORKERS, {"type": "worker", "index": 1}, False),
        ({"chief": ["c:1"], "worker": ["w:1"]}, {"type": "chief", "index": 0}, True),
        ({"chief": ["c:1"], "worker": ["w:1"]}, {"type": "worker", "index": 0}, False),
        (
            {"worker": ["w:1"], "evaluator": ["e:1"]},
            {"type": "evaluator", "index": 0},
            False,
        ),
    ],
)
def test_is_chief_outside_a_scope_reads_tf_config(monkeypatch, cluster, task, chief):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert distribute.is_chief() is chief
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.is_chief() is True


def test_unknown_strategy_name():
    with pytest.raises(ValueError, match=r"one of .*Received: name='horovod'"):
        distribute.get_strategy("horovod")


def test_arguments_of_other_strategies_are_rejected():
    with pytest.raises(ValueError, match=r"'mirrored' strategy only.*name='default'"):
        distribute.get_strategy("default", devices=["/cpu:0"])
    with pytest.raises(ValueError, match=r"'tpu' strategy only.*tpu='v3-8'"):
        distribute.get_strategy("mirrored", tpu="v3-8")
    with pytest.raises(ValueError, match=r"non-empty list.*devices='/cpu:0'"):
        distribute.get_strategy("mirrored", devices="/cpu:0")


def test_missing_device_is_named_with_the_available_ones():
    with pytest.raises(
        ValueError, match=r"'/gpu:7' is not available.*CPU:0.*devices=\['/gpu:7'\]"
    ):
        distribute.get_strategy("mirrored", devices=["/gpu:7"])


def test_unavailable_tpu(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ValueError, match=r"No TPU is available.*Received: tpu=None"):
        distribute.get_strategy("tpu")


def test_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"TF_CONFIG.*not set.*'mirrored'"):
        distribute.get_strategy("multi_worker")


def test_multi_worker_with_malformed_tf_config_fails_before_connecting(monkeypatch):
    config = {"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 2}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"index must be an int in \[0, 2\)"):
        distribute.get_strategy("multi_worker")
    assert time.monotonic() - start < 5


# --- TF_CONFIG validation --------------------------------------------------------


def _config(cluster=TWO_WORKERS, task=None):
    return {"cluster": cluster, "task": task or {"type": "worker", "index": 0}}


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ('{"cluster": {"worker": ["a:1"]}, "task": ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"task": {"type": "worker", "index": 0}}, "needs a 'cluster' object"),
        (_config(cluster={}), "needs a 'cluster' object"),
        (_config(cluster={"ps": ["h:1"], "worker": ["h:2"]}), "has a 'ps' job"),
        (_config(cluster={"worker": "h:1,h:2"}), "must be a non-empty list"),
        (_config(cluster={"worker": ["h0:2222", "h1"]}), "'h1' of job 'worker'"),
        (_config(cluster={"worker": ["h0:99999"]}), "port in 1..65535"),
        (_config(cluster={"worker": ["h:1", "h:1"]}), "every task needs its own"),
        (
            _config(cluster={"chief": ["c:1", "c:2"], "worker": ["w:1"]}),
            "only one chief",
        ),
        (_config(cluster={"evaluator": ["e:1"]}), "needs a 'worker'"),
        ({"cluster": TWO_WORKERS}, "needs a 'task' object"),
        ({"cluster": TWO_WORKERS, "task": {"type": "worker"}}, "'type' and 'index'"),
        (_config(task={"type": "chief", "index": 0}), r"'chief' is not a job"),
        (_config(task={"type": "worker", "index": -1}), r"int in \[0, 2\)"),
        (_config(task={"type": "worker", "index": "0"}), r"int in \[0, 2\)"),
        (_config(task={"type": "worker", "index": True}), r"int in \[0, 2\)"),
    ],
)
def test_malformed_tf_config(tf_config, message):
    with pytest.raises(ValueError, match=message) as info:
        distribute.validate_tf_config(tf_config)
    assert "Received: TF_CONFIG=" in str(info.value)


def test_valid_tf_config_from_string_dict_and_environment(monkeypatch):
    config = _config(
        cluster={"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222"]},
        task={"type": "worker", "index": 0},
    )
    assert distribute.validate_tf_config(config) == config
    assert distribute.validate_tf_config(json.dumps(config)) == config
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert distribute.validate_tf_config() == config
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="not set"):
        distribute.validate_tf_config()


# --- batches ---------------------------------------------------------------------


def test_check_global_batch_on_one_replica():
    assert distribute.check_global_batch(5) == 5
    assert distribute.check_global_batch(5, drop_remainder=True) == 5
    for bad in (0, -4, 2.0, True, "8"):
        with pytest.raises(ValueError, match=r"positive int.*batch_size="):
            distribute.check_global_batch(bad)
    with pytest.raises(ValueError, match="drop_remainder=1"):
        distribute.check_global_batch(4, drop_remainder=1)


def test_batch_for_strategy_batches_and_shards_by_data():
    import tensorflow as tf

    images = np.zeros((10, 32, 32, 1), "float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, images))
    ragged = distribute.batch_for_strategy(dataset, 4)
    assert [int(x.shape[0]) for x, _ in ragged] == [4, 4, 2]
    static = distribute.batch_for_strategy(dataset, 4, drop_remainder=True)
    assert static.element_spec[0].shape.as_list() == [4, 32, 32, 1]
    assert (
        static.options().experimental_distribute.auto_shard_policy
        == tf.data.experimental.AutoShardPolicy.DATA
    )
    files = distribute.batch_for_strategy(dataset, 4, shard_policy="file")
    assert (
        files.options().experimental_distribute.auto_shard_policy
        == tf.data.experimental.AutoShardPolicy.FILE
    )
    with pytest.raises(ValueError, match="shard_policy='rows'"):
        distribute.batch_for_strategy(dataset, 4, shard_policy="rows")


def _unconnected_tpu_strategy():
    """A TPUStrategy object that never connected to a TPU.

    Enough for the checks that only look at the strategy's type, which
    must refuse what a TPU cannot compile before anything runs on it.
    """
    import tensorflow as tf

    return object.__new__(tf.distribute.TPUStrategy)


def test_tpu_requires_static_batches_and_shapes():
    tpu = _unconnected_tpu_strategy()
    with pytest.raises(ValueError, match="drop_remainder=True.*drop_remainder=False"):
        distribute.check_global_batch(8, tpu)
    with pytest.raises(ValueError, match=r"static shapes.*input_shape=\(None, 96, 1\)"):
        distribute.build_in_scope(tpu, input_shape=(None, 96, 1))
    with pytest.raises(
        ValueError, match=r"static shapes.*input_shape=\(None, None, 1\)"
    ):
        distribute.build_in_scope(tpu, depth=2)


# --- building and saving ------------------------------------------------------


def test_build_in_scope_compiles_the_paper_loss_iou_and_dice():
    model = distribute.build_in_scope(**TINY)
    assert isinstance(model.loss, BCEDiceLoss)
    assert not model.get_layer("x_0_0_bn1").synchronized  # one replica
    images = np.zeros((2, 32, 32, 1), "float32")
    logs = model.evaluate(images, images, return_dict=True, verbose=0)
    assert set(logs) == {"loss", "iou", "dice"}


def test_build_in_scope_deep_supervision_and_classes():
    model = distribute.build_in_scope(
        None,
        optimizer=keras.optimizers.SGD(0.1),
        deep_supervision=True,
        num_classes=3,
        **TINY,
    )
    assert sorted(model.loss) == ["output_l1", "output_l2"]
    assert all(isinstance(v, CategoricalCEDiceLoss) for v in model.loss.values())
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    images = np.zeros((2, 32, 32, 1), "float32")
    labels = np.zeros((2, 32, 32), "int32")
    logs = model.evaluate(
        images, {"output_l1": labels, "output_l2": labels}, return_dict=True, verbose=0
    )
    assert logs["output_l2_iou"] == pytest.approx(1.0)  # all background, both
    assert logs["output_l1_iou"] == pytest.approx(1.0)  # every head, as in train()
    custom = distribute.build_in_scope(
        None, loss="binary_crossentropy", metrics=[IoUScore(name="my_iou")], **TINY
    )
    assert custom.loss == "binary_crossentropy"
    assert "my_iou" in custom.evaluate(images, images, return_dict=True, verbose=0)


def test_save_on_chief_writes_by_extension(tmp_path):
    model = build(**TINY)
    images = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    path = distribute.save_on_chief(model, tmp_path / "a" / "model.keras")
    assert path == str(tmp_path / "a" / "model.keras")
    np.testing.assert_allclose(
        keras.saving.load_model(path).predict(images, verbose=0),
        model.predict(images, verbose=0),
        atol=1e-6,
    )
    weights = distribute.save_on_chief(model, tmp_path / "model.weights.h5")
    other = build(**TINY)
    other.load_weights(weights)
    np.testing.assert_allclose(
        other.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    written = []
    distribute.save_on_chief(
        model, tmp_path / "custom", save_fn=lambda m, p: written.append((m, p))
    )
    assert written == [(model, str(tmp_path / "custom"))]
    with pytest.raises(ValueError, match=r"filepath='.*model\.h5'"):
        distribute.save_on_chief(model, tmp_path / "model.h5")


# --- MirroredStrategy, 2 logical CPU devices (own process) ----------------------


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(TESTS / "distribute_mirrored_checks.py"),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "7 passed" in result.stdout


# --- MultiWorkerMirroredStrategy, 2 local workers (own processes) --------------


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def multi_worker_run(tmp_path_factory):
    """Trains on two local workers; returns their output folder."""
    out = tmp_path_factory.mktemp("multi_worker")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        scratch = out / f"tmp_{index}"
        scratch.mkdir()
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        workers.append(
            subprocess.Popen(
                [sys.executable, str(TESTS / "distribute_worker.py"), str(out)],
                cwd=REPO,
                env=_env(TF_CONFIG=json.dumps(tf_config), TMPDIR=str(scratch)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + TIMEOUT_S
    logs = []
    try:
        for worker in workers:
            remaining = max(1.0, deadline - time.monotonic())
            logs.append(worker.communicate(timeout=remaining)[0])
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.kill()
            worker.communicate()
        pytest.fail(f"the two workers did not finish within {TIMEOUT_S} s")
    for index, (worker, log) in enumerate(zip(workers, logs)):
        assert worker.returncode == 0, f"worker {index}:\n{log[-6000:]}"
    return out


def _worker_data():
    sys.path.insert(0, str(TESTS))
    try:
        from distribute_worker import worker_data
    finally:
        sys.path.remove(str(TESTS))
    return worker_data()


def _weights(path):
    with np.load(path) as arrays:
        return [arrays[f"arr_{k}"] for k in range(len(arrays.files))]


@pytest.mark.slow
def test_workers_start_and_end_with_identical_weights(multi_worker_run):
    out = multi_worker_run
    reports = [json.loads((out / f"report_{k}.json").read_text()) for k in range(2)]
    assert [r["replicas"] for r in reports] == [2, 2]
    assert all(r["changed"] for r in reports)
    # The workers seeded their initializers differently; the strategy
    # broadcast the chief's initial weights.
    for name in ("initial", "weights"):
        first, second = (_weights(out / f"{name}_{k}.npz") for k in range(2))
        assert len(first) == len(second) > 0
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)
    assert reports[0]["loss"] == reports[1]["loss"]
    assert reports[0]["iou"] == reports[1]["iou"]
    np.testing.assert_array_equal(
        np.load(out / "probe_0.npy"), np.load(out / "probe_1.npy")
    )


@pytest.mark.slow
def test_two_workers_train_like_one_device(multi_worker_run):
    """Replaying the global batches on one device gives the workers' weights."""
    images, masks = _worker_data()
    model = distribute.build_in_scope(
        None, optimizer=keras.optimizers.SGD(0.05), **TINY
    )
    model.set_weights(_weights(multi_worker_run / "initial_0.npz"))
    model.fit(images, masks, batch_size=4, epochs=2, shuffle=False, verbose=0)
    final = _weights(multi_worker_run / "weights_0.npz")
    for got, want, variable in zip(final, model.get_weights(), model.weights):
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=variable.path)


@pytest.mark.slow
def test_only_the_chief_writes_checkpoint_and_export(multi_worker_run):
    import tensorflow as tf

    out = multi_worker_run
    chief, other = (
        json.loads((out / f"report_{k}.json").read_text()) for k in range(2)
    )
    assert chief["is_chief"] and not other["is_chief"]
    assert chief["written"] == [
        str(out / "chief" / "unetpp.keras"),
        str(out / "chief" / "export"),
    ]
    assert other["written"] == [None, None]
    assert sorted(p.name for p in (out / "chief").iterdir()) == [
        "export",
        "unetpp.keras",
    ]
    # The other worker wrote into its temporary folder and cleaned up.
    assert list((out / "tmp_1").glob("keras_unetpp_worker_*")) == []
    images = _worker_data()[0][:2]
    probe = np.load(out / "probe_0.npy")
    restored = keras.saving.load_model(out / "chief" / "unetpp.keras")
    np.testing.assert_allclose(restored.predict(images, verbose=0), probe, atol=1e-5)
    # The TF Serving export: one level (depth 2), version 1.
    version = out / "chief" / "export" / "unetpp_l2" / "1"
    assert (version / "saved_model.pb").is_file()
    reloaded = tf.saved_model.load(str(version))
    served = reloaded.signatures["serving_default"](image=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), probe, atol=1e-5)
