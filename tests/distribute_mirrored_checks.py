"""MirroredStrategy checks on two logical CPU devices.

TensorFlow fixes its logical devices when its runtime starts, so these
checks run in a process of their own: tests/test_distribute.py launches
`python -m pytest tests/distribute_mirrored_checks.py`. The file name does
not match `test_*.py`, so the main test run does not collect it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp
from keras_unetpp import DiceScore, IoUScore, build, distribute

assert keras.backend.backend() == "tensorflow", "run with KERAS_BACKEND=tensorflow"
# Before any TensorFlow operation: split the CPU into two logical devices.
_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration()] * 2
)

TINY = dict(depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16))


@pytest.fixture(scope="module")
def strategy():
    return distribute.get_strategy("mirrored")


def _data(n, seed):
    """Images with a bright square (the foreground) on noise."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.3, (n, 32, 32, 1)).astype("float32")
    masks = np.zeros((n, 32, 32, 1), "float32")
    for k in range(n):
        top, left = rng.integers(0, 20, size=2)
        size = rng.integers(6, 12)
        masks[k, top : top + size, left : left + size] = 1.0
    return images + masks, masks


def test_mirrors_both_logical_cpus(strategy):
    assert strategy.num_replicas_in_sync == 2
    assert distribute.is_chief(strategy)
    assert [d.rsplit(":", 2)[-2:] for d in strategy.extended.worker_devices] == [
        ["CPU", "0"],
        ["CPU", "1"],
    ]


def test_explicit_devices_and_missing_device():
    explicit = distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert explicit.num_replicas_in_sync == 2
    with pytest.raises(ValueError, match=r"'/gpu:0' is not available.*CPU:1"):
        distribute.get_strategy("mirrored", devices=["/cpu:0", "/gpu:0"])


def test_global_batch_against_two_replicas(strategy):
    assert distribute.check_global_batch(8, strategy, drop_remainder=True) == 4
    # Uneven splits are fine without static shapes: 3 -> 2 + 1.
    assert distribute.check_global_batch(3, strategy, drop_remainder=False) == 2
    with pytest.raises(
        ValueError, match=r"divisible by the 2 replicas.*use 4 or 6.*batch_size=5"
    ):
        distribute.check_global_batch(5, strategy, drop_remainder=True)
    with pytest.raises(ValueError, match=r"at least 2.*batch_size=1"):
        distribute.check_global_batch(1, strategy)
    images, masks = _data(4, seed=0)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    with pytest.raises(ValueError, match="batch_size=3"):
        distribute.batch_for_strategy(dataset, 3, strategy, drop_remainder=True)


def _threshold_in_gap(probabilities):
    """A threshold far from every predicted probability, and that distance.

    Replicas run the same convolutions on smaller batches, which may change
    the last bits of a probability; a threshold in the widest gap between
    the central predicted values makes both runs threshold every pixel the
    same way, so the scores can be compared exactly.
    """
    values = np.unique(probabilities.ravel())
    low, high = np.quantile(values, [0.3, 0.7])
    central = values[(values >= low) & (values <= high)]
    gaps = np.diff(central)
    k = int(np.argmax(gaps))
    return float(central[k] + gaps[k] / 2), float(gaps[k] / 2)


def test_distributed_scores_equal_single_device_scores(strategy):
    keras.utils.set_random_seed(1)
    single = build(**TINY)
    images, masks = _data(11, seed=2)
    probabilities = single.predict(images, batch_size=4, verbose=0)
    threshold, margin = _threshold_in_gap(probabilities)
    assert margin > 1e-6

    def metrics():
        return [
            IoUScore(threshold=threshold),
            IoUScore(threshold=threshold, average="per_image"),
            DiceScore(threshold=threshold),
        ]

    single.compile(loss="binary_crossentropy", metrics=metrics())
    mirrored = distribute.build_in_scope(
        strategy, loss="binary_crossentropy", metrics=metrics(), **TINY
    )
    mirrored.set_weights(single.get_weights())
    distributed_probabilities = mirrored.predict(images, batch_size=4, verbose=0)
    np.testing.assert_allclose(distributed_probabilities, probabilities, atol=margin)

    # 11 images in global batches of 4: the last batch (3) splits 2 + 1.
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
    expected = single.evaluate(dataset, return_dict=True, verbose=0)
    got = mirrored.evaluate(dataset, return_dict=True, verbose=0)
    # The same scores from NumPy, over all 11 images at once.
    truth = masks > 0.5
    predicted = probabilities > threshold
    inter = np.sum(truth & predicted)
    union = np.sum(truth | predicted)
    per_image = np.sum(truth & predicted, axis=(1, 2, 3)) / np.sum(
        truth | predicted, axis=(1, 2, 3)
    )
    by_hand = {
        "iou": inter / union,
        "iou_per_image": per_image.mean(),
        "dice": 2 * inter / (truth.sum() + predicted.sum()),
    }
    assert 0.05 < by_hand["iou"] < 0.95
    for name, value in by_hand.items():
        assert expected[name] == pytest.approx(value, abs=1e-6), name
        assert got[name] == pytest.approx(value, abs=1e-6), name


def test_fit_matches_single_device_and_keeps_replicas_equal(strategy):
    """Two replicas on global batches of 4 take the single-device SGD steps.

    The loss is per image and the batch normalization is synchronized (it
    uses the statistics of the global batch), so summing the replicas'
    gradients reproduces the single-device gradient of the whole batch, and
    the moving statistics are the single-device ones on both replicas.
    """
    config = dict(TINY, deep_supervision=True)
    keras.utils.set_random_seed(3)
    single = distribute.build_in_scope(None, optimizer="sgd", **config)
    mirrored = distribute.build_in_scope(strategy, optimizer="sgd", **config)
    assert mirrored.get_layer("x_0_0_bn1").synchronized
    assert not single.get_layer("x_0_0_bn1").synchronized
    initial = single.get_weights()
    mirrored.set_weights(initial)
    images, masks = _data(8, seed=4)
    targets = {name: masks for name in single.output_names}
    examples = tf.data.Dataset.from_tensor_slices((images, targets))

    single_history = single.fit(examples.batch(4), epochs=2, verbose=0).history
    train = distribute.batch_for_strategy(examples, 4, strategy)
    mirrored_history = mirrored.fit(train, epochs=2, verbose=0).history

    np.testing.assert_allclose(
        mirrored_history["loss"], single_history["loss"], rtol=1e-5
    )
    assert mirrored_history["output_l2_iou"] == pytest.approx(
        single_history["output_l2_iou"], abs=1e-6
    )
    moved = 0
    for got, want, before, variable in zip(
        mirrored.get_weights(), single.get_weights(), initial, mirrored.weights
    ):
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=variable.path)
        moved += not np.allclose(got, before)
        replicas = [v.numpy() for v in variable.value.values]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])
    assert moved > len(initial) // 2
    # Pruned and inference-mode models share the mirrored variables.
    for make in (
        lambda m: keras_unetpp.prune(m, 1),
        lambda m: keras_unetpp.inference_model(m, "accurate"),
    ):
        np.testing.assert_allclose(
            make(mirrored).predict(images, batch_size=4, verbose=0),
            make(single).predict(images, batch_size=4, verbose=0),
            atol=1e-4,  # the weights agree to 1e-5
        )


def test_recomputed_nodes_train_like_single_device(strategy):
    """`recompute_nodes` under two replicas with synchronized batch norm.

    Synchronized batch norm runs Keras' computation (not the fused kernel);
    the recomputation must still leave one moving-average update per step,
    and each replica recomputes only its own nodes.
    """
    config = dict(TINY, deep_supervision=True)
    keras.utils.set_random_seed(5)
    single = distribute.build_in_scope(None, optimizer="sgd", **config)
    mirrored = distribute.build_in_scope(strategy, optimizer="sgd", **config)
    assert keras_unetpp.recompute_nodes(mirrored) == 6
    mirrored.set_weights(single.get_weights())
    images, masks = _data(8, seed=6)
    targets = {name: masks for name in single.output_names}
    examples = tf.data.Dataset.from_tensor_slices((images, targets))
    single.fit(examples.batch(4), epochs=2, verbose=0)
    mirrored.fit(
        distribute.batch_for_strategy(examples, 4, strategy), epochs=2, verbose=0
    )
    for got, want, variable in zip(
        mirrored.get_weights(), single.get_weights(), mirrored.weights
    ):
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=variable.path)


def test_logits_heads_compile_and_train_like_compile_model(strategy):
    """A logits head (`output_activation=None`) under MirroredStrategy.

    `build_in_scope` must compile through `training.compile_model`, the one
    compile path: losses and metrics from logits on every head. Before, it
    put `from_logits=False` losses on logits heads (a wrong loss) and IoU on
    the deepest head only.
    """
    config = dict(TINY, deep_supervision=True, output_activation=None)
    keras.utils.set_random_seed(7)
    mirrored = distribute.build_in_scope(strategy, optimizer="sgd", **config)
    assert sorted(mirrored.loss) == ["output_l1", "output_l2"]
    assert all(loss.from_logits for loss in mirrored.loss.values())
    single = build(**config)
    single.set_weights(mirrored.get_weights())
    keras_unetpp.compile_model(single, optimizer="sgd")
    images, masks = _data(8, seed=8)
    targets = {name: masks for name in single.output_names}
    examples = tf.data.Dataset.from_tensor_slices((images, targets))
    single_logs = single.evaluate(examples.batch(4), return_dict=True, verbose=0)
    mirrored_logs = mirrored.evaluate(
        distribute.batch_for_strategy(examples, 4, strategy),
        return_dict=True,
        verbose=0,
    )
    assert set(mirrored_logs) == set(single_logs)
    for key in ("output_l1_iou", "output_l2_iou", "output_l2_dice"):
        assert key in mirrored_logs
        assert mirrored_logs[key] == pytest.approx(single_logs[key], abs=1e-5)
    assert mirrored_logs["loss"] == pytest.approx(single_logs["loss"], rel=1e-5)
    # The IoU is that of the thresholded probabilities sigmoid(logits) >= 0.5,
    # i.e. logits >= 0: worked out here with NumPy.
    logits = keras_unetpp.prune(single, 2).predict(images, verbose=0)
    predicted = logits >= 0.0
    inter = np.logical_and(predicted, masks > 0.5).sum()
    union = np.logical_or(predicted, masks > 0.5).sum()
    assert mirrored_logs["output_l2_iou"] == pytest.approx(inter / union, abs=1e-5)
