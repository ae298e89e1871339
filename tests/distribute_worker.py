"""One worker of the two-process MultiWorkerMirroredStrategy test.

Run by tests/test_distribute.py with TF_CONFIG set; not a test module itself.
Every worker trains the same tiny UNet++ on the same data (each step takes
its share of one global batch), then writes its initial and final weights to
`<out>/initial_<task index>.npz` and `<out>/weights_<task index>.npz` (so
that the test can compare the workers, and replay the training on one
device) and calls `save_on_chief` for a `.keras` checkpoint and a TF Serving
export (`export_pruned`) into `<out>/chief/`; only the chief may write there.
"""

import json
import os
import sys

import numpy as np


def worker_data():
    """The 16 training images and masks, the same on every worker."""
    rng = np.random.default_rng(0)
    images = rng.random((16, 32, 32, 1), dtype=np.float32)
    return images, (images > 0.5).astype(np.float32)


def main(out):
    import keras_unetpp
    from keras_unetpp import distribute

    # The strategy comes first, before any other TensorFlow operation.
    strategy = distribute.get_strategy("multi_worker")
    import keras
    import tensorflow as tf

    task = json.loads(os.environ["TF_CONFIG"])["task"]
    # Different seeds: the strategy must still start both workers from the
    # same weights (it broadcasts the chief's initial values).
    keras.utils.set_random_seed(7 + task["index"])
    images, masks = worker_data()
    train = distribute.batch_for_strategy(
        tf.data.Dataset.from_tensor_slices((images, masks)),
        batch_size=4,
        strategy=strategy,
        drop_remainder=True,
    )
    model = distribute.build_in_scope(
        strategy,
        optimizer={"class_name": "sgd", "config": {"learning_rate": 0.05}},
        depth=2,
        input_shape=(32, 32, 1),
        filters=(4, 8, 16),
    )
    initial = [w.copy() for w in model.get_weights()]
    np.savez(os.path.join(out, f"initial_{task['index']}.npz"), *initial)
    history = model.fit(train, epochs=2, verbose=0)
    weights = model.get_weights()
    np.savez(os.path.join(out, f"weights_{task['index']}.npz"), *weights)
    chief_dir = os.path.join(out, "chief")
    written = [
        # Outside the scope and without `strategy`: the chief from TF_CONFIG.
        distribute.save_on_chief(model, os.path.join(chief_dir, "unetpp.keras")),
        # The TF Serving export of keras_unetpp.export, by the chief only.
        distribute.save_on_chief(
            model,
            os.path.join(chief_dir, "export"),
            strategy,
            save_fn=lambda m, path: keras_unetpp.export_pruned(m, path),
        ),
    ]
    probe = model.predict(images[:2], verbose=0)
    report = {
        "task": task,
        "replicas": strategy.num_replicas_in_sync,
        "is_chief": distribute.is_chief(strategy),
        "written": written,
        "loss": [float(x) for x in history.history["loss"]],
        "iou": [float(x) for x in history.history["iou"]],
        "changed": any(not np.array_equal(a, b) for a, b in zip(initial, weights)),
    }
    np.save(os.path.join(out, f"probe_{task['index']}.npy"), probe)
    with open(os.path.join(out, f"report_{task['index']}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(sys.argv[1])
