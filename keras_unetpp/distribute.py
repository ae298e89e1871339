"""Training on several devices or machines with `tf.distribute`.

The model, the losses and the metrics use `keras.ops` only and run inside
any strategy scope; what is specific to `tf.distribute` lives here.
TensorFlow is imported when a function here runs, never at import time, so
that importing this module stays cheap under the JAX and PyTorch backends.

Four strategies are supported, picked by name:

- `"default"`: one device, no distribution (TensorFlow's default strategy).
- `"mirrored"`: synchronous data parallelism over the devices of one
  machine (all GPUs; without GPUs, all logical CPU devices).
- `"multi_worker"`: synchronous data parallelism over several machines,
  configured by the `TF_CONFIG` environment variable.
- `"tpu"`: a Cloud TPU. TPUs compile the whole step with XLA, so they need
  static shapes: a fixed `input_shape`, batches with `drop_remainder=True`
  and a global batch divisible by the number of cores; `bfloat16` mixed
  precision (`keras.mixed_precision.set_global_policy("mixed_bfloat16")`)
  is the TPU's native format and the model's heads stay float32.
"""

import json
import numbers
import os
import shutil
import tempfile

import keras

from keras_unetpp import keras_patches
from keras_unetpp.errors import InputError
from keras_unetpp.model import build
from keras_unetpp.training import compile_model
from keras_unetpp.validation import check_int

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

# Jobs a MultiWorkerMirroredStrategy cluster may hold. A "ps" job belongs to
# ParameterServerStrategy, which this package does not drive.
MULTI_WORKER_JOBS = ("chief", "worker", "evaluator")

SHARD_POLICIES = ("auto", "data", "file", "off")


def _tf():
    import tensorflow as tf

    return tf


def get_strategy(name="default", devices=None, tpu=None):
    """Creates a `tf.distribute.Strategy` by name, with clear errors.

    Create the strategy at the start of the program, before any other
    TensorFlow operation (a multi-worker strategy must configure the
    collective ops before the TensorFlow runtime starts), then build and
    compile the model inside `strategy.scope()` (see `build_in_scope`).

    Args:
        name: one of `"default"`, `"mirrored"`, `"multi_worker"`, `"tpu"`.
            Defaults to `"default"`.
        devices: list of device names for `"mirrored"`, e.g.
            `["/gpu:0", "/gpu:1"]`. `None` takes every GPU, or every logical
            CPU device when there is no GPU. Defaults to `None`.
        tpu: the TPU name or `grpc://` address for `"tpu"`; `None` means
            the TPU of this TPU VM (or `$TPU_NAME`). Defaults to `None`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: for an unknown name, devices that do not exist, a
            missing or malformed `TF_CONFIG`, a TPU that cannot be reached,
            or a strategy other than `"default"` under a non-TensorFlow
            Keras backend.

    Example:

    ```python
    strategy = keras_unetpp.get_strategy("mirrored")
    model = keras_unetpp.build_in_scope(strategy, depth=4,
                                        input_shape=(96, 96, 1))
    model.fit(train_ds, epochs=10)
    ```
    """
    if name not in STRATEGIES:
        raise InputError(f"`name` must be one of {STRATEGIES}. Received: name={name!r}")
    if name != "default" and keras.backend.backend() != "tensorflow":
        raise InputError(
            f"The {name!r} strategy is a tf.distribute strategy and needs the "
            "TensorFlow backend (set KERAS_BACKEND=tensorflow). Under JAX, "
            "use `keras.distribution` instead. "
            f"Received: backend={keras.backend.backend()!r}"
        )
    if devices is not None and name != "mirrored":
        raise InputError(
            "`devices` applies to the 'mirrored' strategy only. "
            f"Received: name={name!r}, devices={devices!r}"
        )
    if tpu is not None and name != "tpu":
        raise InputError(
            f"`tpu` applies to the 'tpu' strategy only. Received: name={name!r}, "
            f"tpu={tpu!r}"
        )
    tf = _tf()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_mirrored_devices(devices))
    if name == "multi_worker":
        return _multi_worker_strategy()
    return _tpu_strategy(tpu)


def _mirrored_devices(devices):
    tf = _tf()
    available = {}
    for device in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(device.name)
        available[(spec.device_type, spec.device_index)] = device.name
    if devices is None:
        gpus = sorted(key for key in available if key[0] == "GPU")
        chosen = gpus or sorted(key for key in available if key[0] == "CPU")
        return [available[key] for key in chosen]
    if isinstance(devices, str) or not devices:
        raise InputError(
            "`devices` must be a non-empty list of device names such as "
            f"['/gpu:0', '/gpu:1']. Received: devices={devices!r}"
        )
    chosen = []
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except (TypeError, ValueError):
            spec = None
        key = None if spec is None else (spec.device_type, spec.device_index or 0)
        if key not in available:
            raise InputError(
                f"Device {device!r} is not available on this machine; the "
                f"available devices are {sorted(available.values())}. "
                f"Received: devices={devices!r}"
            )
        chosen.append(available[key])
    return chosen


def _multi_worker_strategy():
    tf = _tf()
    if not os.environ.get("TF_CONFIG"):
        raise InputError(
            "The 'multi_worker' strategy reads the cluster from the TF_CONFIG "
            "environment variable, which is not set. Set it on every worker, "
            'e.g. {"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
            '"task": {"type": "worker", "index": 0}}, or use \'mirrored\' '
            "on a single machine. Received: TF_CONFIG=None"
        )
    validate_tf_config()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise InputError(
            "Could not start the 'multi_worker' strategy. Create it at the "
            "start of the program, before any other TensorFlow operation "
            f"(original error: {error}). "
            f"Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}"
        ) from error


def _tpu_strategy(tpu):
    tf = _tf()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise InputError(
            "No TPU is available: the 'tpu' strategy needs a Cloud TPU (a TPU "
            "VM, or a TPU name or grpc:// address in `tpu` or $TPU_NAME). "
            f"Use 'mirrored' or 'default' elsewhere (original error: {error}). "
            f"Received: tpu={tpu!r}"
        ) from error


def validate_tf_config(tf_config=None):
    """Parses and checks a `TF_CONFIG` for a multi-worker cluster.

    Catches the mistakes that otherwise surface as a hang or as an opaque
    gRPC error: text that is not JSON, a missing `cluster` or `task`, an
    address without a port, a task index outside its job, a job that a
    multi-worker strategy does not run (`"ps"`), or two tasks on one address.

    Args:
        tf_config: the configuration as a JSON string or a dict; `None`
            reads the `TF_CONFIG` environment variable. Defaults to `None`.

    Returns:
        The configuration as a dict.

    Raises:
        ValueError: describing the first problem found; the message ends
            with the received configuration.

    Example:

    ```python
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 0},
    })
    keras_unetpp.validate_tf_config()["task"]  # {"type": "worker", ...}
    ```
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG")
        if not tf_config:
            raise InputError(
                "The TF_CONFIG environment variable is not set. "
                "Received: TF_CONFIG=None"
            )
    received = f"Received: TF_CONFIG={tf_config!r}"
    if isinstance(tf_config, str):
        try:
            config = json.loads(tf_config)
        except json.JSONDecodeError as error:
            raise InputError(
                f"TF_CONFIG is not valid JSON ({error}). {received}"
            ) from None
    else:
        config = tf_config
    if not isinstance(config, dict):
        raise InputError(
            f"TF_CONFIG must be a JSON object with 'cluster' and 'task'. {received}"
        )
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise InputError(
            "TF_CONFIG needs a 'cluster' object mapping job names to lists of "
            f"'host:port' addresses. {received}"
        )
    seen = {}
    for job, addresses in cluster.items():
        if job not in MULTI_WORKER_JOBS:
            raise InputError(
                f"TF_CONFIG has a {job!r} job; a multi-worker cluster has only "
                f"the jobs {MULTI_WORKER_JOBS}. {received}"
            )
        if (
            isinstance(addresses, str)
            or not isinstance(addresses, list)
            or not (addresses)
        ):
            raise InputError(
                f"TF_CONFIG cluster job {job!r} must be a non-empty list of "
                f"'host:port' addresses. {received}"
            )
        if job == "chief" and len(addresses) != 1:
            raise InputError(f"TF_CONFIG may have only one chief. {received}")
        for address in addresses:
            _check_address(address, job, received)
            if address in seen:
                raise InputError(
                    f"TF_CONFIG gives {address!r} to both {seen[address]} and "
                    f"{job}; every task needs its own address. {received}"
                )
            seen[address] = job
    if "worker" not in cluster and "chief" not in cluster:
        raise InputError(
            f"TF_CONFIG cluster needs a 'worker' (or 'chief') job. {received}"
        )
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise InputError(
            "TF_CONFIG needs a 'task' object with the 'type' and 'index' of "
            f"this process, e.g. {{'type': 'worker', 'index': 0}}. {received}"
        )
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise InputError(
            f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
            f"{sorted(cluster)}. {received}"
        )
    if (
        isinstance(index, bool)
        or not isinstance(index, numbers.Integral)
        or not (0 <= index < len(cluster[task_type]))
    ):
        raise InputError(
            f"TF_CONFIG task index must be an int in [0, "
            f"{len(cluster[task_type])}) for job {task_type!r}. {received}"
        )
    return config


def _check_address(address, job, received):
    host, _, port = (
        address.rpartition(":") if isinstance(address, str) else ("", "", "")
    )
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(
            f"TF_CONFIG address {address!r} of job {job!r} is not 'host:port' "
            f"with a port in 1..65535. {received}"
        )


def _is_tpu(strategy):
    tf = _tf()
    return isinstance(
        strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)
    )


def check_global_batch(batch_size, strategy=None, drop_remainder=False):
    """Checks a global batch size against a strategy's replicas.

    `batch_size` is the global batch: each step splits it across the
    `strategy.num_replicas_in_sync` replicas. With `drop_remainder=True`
    (static shapes, required on TPUs) every replica must get the same
    number of images, so the batch must be divisible by the replica count;
    without it an uneven split is allowed, but every replica needs at least
    one image.

    Args:
        batch_size: int, the global batch size.
        strategy: a `tf.distribute.Strategy`; `None` uses the current one.
            Defaults to `None`.
        drop_remainder: bool, whether the data is batched with
            `drop_remainder=True`. Must be `True` on TPUs.
            Defaults to `False`.

    Returns:
        int, the per-replica batch size (the largest one, when uneven).

    Raises:
        ValueError: for a batch that does not split as required.

    Example:

    ```python
    strategy = keras_unetpp.get_strategy("mirrored")  # e.g. 2 GPUs
    keras_unetpp.check_global_batch(16, strategy, drop_remainder=True)  # 8
    ```
    """
    tf = _tf()
    strategy = strategy or tf.distribute.get_strategy()
    check_int(batch_size, "batch_size")
    if not isinstance(drop_remainder, bool):
        raise InputError(
            "`drop_remainder` must be a bool. "
            f"Received: drop_remainder={drop_remainder!r}"
        )
    if _is_tpu(strategy) and not drop_remainder:
        raise InputError(
            "TPUs compile the step for one static batch shape: batch the data "
            "with drop_remainder=True. Received: drop_remainder=False"
        )
    replicas = strategy.num_replicas_in_sync
    if drop_remainder and batch_size % replicas:
        lower = batch_size - batch_size % replicas
        raise InputError(
            f"The global batch size must be divisible by the {replicas} "
            "replicas in sync when batches have a static size "
            f"(drop_remainder=True); use {lower or replicas} or "
            f"{lower + replicas}. Received: batch_size={batch_size}"
        )
    if batch_size < replicas:
        raise InputError(
            f"The global batch size is split across {replicas} replicas; "
            f"use at least {replicas} so that each replica gets an image. "
            f"Received: batch_size={batch_size}"
        )
    return -(-batch_size // replicas)


def batch_for_strategy(
    dataset, batch_size, strategy=None, drop_remainder=None, shard_policy="data"
):
    """Batches a `tf.data.Dataset` of examples for training under a strategy.

    Checks the global batch with `check_global_batch`, batches, sets the
    multi-worker sharding policy and prefetches. Keras' `fit()` then splits
    every global batch across the replicas.

    Sharding: with `"data"`, each worker reads the whole input and keeps its
    share of every global batch, which works for any dataset (in-memory,
    TFDS, one file); `"file"` gives each worker its own input files (needs
    at least as many files as workers); `"auto"` tries files, then data;
    `"off"` lets every worker see all data (only for inputs already split
    per worker).

    Args:
        dataset: a `tf.data.Dataset` of unbatched `(image, mask)` examples.
        batch_size: int, the global batch size.
        strategy: a `tf.distribute.Strategy`; `None` uses the current one.
            Defaults to `None`.
        drop_remainder: bool; `None` means `True` on TPUs (static shapes)
            and `False` elsewhere. Defaults to `None`.
        shard_policy: `"data"`, `"file"`, `"auto"` or `"off"`.
            Defaults to `"data"`.

    Returns:
        The batched, prefetched `tf.data.Dataset`.

    Example:

    ```python
    train = keras_unetpp.batch_for_strategy(examples.shuffle(256, seed=0),
                                            batch_size=16, strategy=strategy)
    ```
    """
    tf = _tf()
    strategy = strategy or tf.distribute.get_strategy()
    if shard_policy not in SHARD_POLICIES:
        raise InputError(
            f"`shard_policy` must be one of {SHARD_POLICIES}. "
            f"Received: shard_policy={shard_policy!r}"
        )
    if drop_remainder is None:
        drop_remainder = _is_tpu(strategy)
    check_global_batch(batch_size, strategy, drop_remainder)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = getattr(
        tf.data.experimental.AutoShardPolicy, shard_policy.upper()
    )
    return (
        dataset.batch(batch_size, drop_remainder=drop_remainder)
        .with_options(options)
        .prefetch(tf.data.AUTOTUNE)
    )


def build_in_scope(
    strategy=None,
    optimizer="adam",
    loss=None,
    metrics=None,
    builder=build,
    sync_batch_norm=True,
    **build_kwargs,
):
    """Builds and compiles a UNet++ inside `strategy.scope()`.

    Variables created in the scope (weights, optimizer slots, metric totals)
    are mirrored across the replicas; the IoU and Dice metrics keep sums
    that are added up across replicas, so the reported scores are those of
    the whole global batch. By default the model is compiled with the
    paper's loss (`BCEDiceLoss`, or `CategoricalCEDiceLoss` for several
    classes) and the `IoUScore` and `DiceScore` metrics on every head, from
    logits when the heads output logits: `training.compile_model`, the one
    compile path of the package.

    With more than one replica, batch normalization is synchronized: each
    step normalizes with the statistics of the whole global batch, so a
    step equals the single-device step on that batch and the moving
    statistics stay identical on every replica. (Unsynchronized, each
    replica would update its own moving statistics, and the replicas, and
    the saved model, would disagree at inference.) The layers' config then
    says `synchronized=True`, which only the TensorFlow backend accepts: to
    use such a model under JAX or PyTorch, rebuild it there and load its
    `.weights.h5` file.

    Args:
        strategy: a `tf.distribute.Strategy`; `None` uses the current one.
            Defaults to `None`.
        optimizer: an optimizer name or config, created in the scope, or a
            `keras.optimizers.Optimizer` created in the same scope.
            Defaults to `"adam"`.
        loss: the `compile()` loss; `None` for the default above.
            Defaults to `None`.
        metrics: the `compile()` metrics; `None` for the default above.
            Defaults to `None`.
        builder: the model function, `keras_unetpp.build` or `build_unet`.
            Defaults to `keras_unetpp.build`.
        sync_batch_norm: bool, synchronize the batch normalization layers
            across replicas when there are several. Defaults to `True`.
        **build_kwargs: arguments of `builder` (`depth`, `input_shape`, ...).

    Returns:
        A compiled `keras.Model` whose variables belong to `strategy`.

    Raises:
        ValueError: under a TPU strategy, when `input_shape` has a `None`
            height or width (TPUs need static shapes).

    Example:

    ```python
    strategy = keras_unetpp.get_strategy("mirrored")
    model = keras_unetpp.build_in_scope(strategy, depth=4,
                                        input_shape=(96, 96, 1),
                                        deep_supervision=True)
    ```
    """
    tf = _tf()
    strategy = strategy or tf.distribute.get_strategy()
    if _is_tpu(strategy):
        shape = tuple(build_kwargs.get("input_shape", (None, None, 1)))
        if None in shape:
            raise InputError(
                "TPUs compile the model for static shapes: give a fixed "
                "input_shape such as (96, 96, 1) and pad or resize the images. "
                f"Received: input_shape={shape!r}"
            )
    with strategy.scope():
        model = builder(**build_kwargs)
        prepare_for_strategy(model, strategy, sync_batch_norm=sync_batch_norm)
        # The one compile path: losses and metrics follow the heads (their
        # activation and classes), as in `train()`.
        compile_model(model, optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def prepare_for_strategy(model, strategy=None, sync_batch_norm=True):
    """Readies a model built in `strategy.scope()` for `fit()` under it.

    `build_in_scope` calls this; call it yourself after building (or
    loading) a model in a strategy's scope by other means, before `fit()`.

    - With more than one replica and `sync_batch_norm=True`, the batch
      normalization layers normalize with the statistics of the global
      batch (see `build_in_scope`).
    - Under `MultiWorkerMirroredStrategy`, `fit()` and `evaluate()` of this
      model get around two multi-worker gaps of Keras 3's TensorFlow
      trainer (checked up to Keras 3.15), which otherwise fail with
      "Attempt to convert a value (PerReplica...)" and "Invalid reduction
      dimension 0". The model's graph, weights and saved files do not
      change.

    Args:
        model: a `keras.Model` whose variables were created in
            `strategy.scope()`.
        strategy: a `tf.distribute.Strategy`; `None` uses the current one.
            Defaults to `None`.
        sync_batch_norm: bool. Defaults to `True`.

    Returns:
        `model`, changed in place.

    Example:

    ```python
    strategy = keras_unetpp.get_strategy("multi_worker")
    with strategy.scope():
        model = keras_unetpp.build(depth=4, deep_supervision=True)
        keras_unetpp.prepare_for_strategy(model, strategy)
        model.compile(optimizer="adam", loss=keras_unetpp.BCEDiceLoss())
    ```
    """
    tf = _tf()
    strategy = strategy or tf.distribute.get_strategy()
    if sync_batch_norm and strategy.num_replicas_in_sync > 1:
        for layer in _all_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _multi_worker_compat(model)
    return model


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _multi_worker_compat(model):
    """Works around two multi-worker gaps of Keras 3's TensorFlow trainer.

    With two or more workers, `MultiWorkerMirroredStrategy.reduce` takes one
    tensor (not a structure), and a mean over `axis=0` needs a batch axis.
    Keras (checked up to 3.15) calls it once on the whole `(image, mask)`
    batch before the first step, only to learn the input shapes, and after
    every step with `axis=0` on the scalar losses and metric values; both
    raise, so `fit()` and `evaluate()` fail. For this model only (its
    architecture, weights and saved files are unchanged):

    - the shapes are taken from the local replica's batch, which has the
      same shapes and needs no collective operation;
    - each step returns its scalar logs as 1-element vectors, which the
      mean over `axis=0` averages across the replicas as on one machine.

    The epoch's metric values do not come from these logs: Keras reads the
    metrics at the end of the epoch, and their variables are summed over
    all replicas of all workers.
    """
    tf = _tf()
    if keras_patches.patched(model, "multi_worker"):
        return
    train_step, test_step = model.train_step, model.test_step

    def local_value(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return model.distribute_strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(local_value, next(batches))
                break
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def as_vectors(logs):
        return keras.tree.map_structure(lambda value: tf.reshape(value, (-1,)), logs)

    keras_patches.patch(
        model,
        "_maybe_symbolic_build",
        lambda _, iterator=None, data_batch=None: maybe_symbolic_build(
            iterator, data_batch
        ),
        "multi_worker_build",
    )
    keras_patches.patch(
        model,
        "train_step",
        lambda _, data: as_vectors(train_step(data)),
        "multi_worker_train",
    )
    keras_patches.patch(
        model,
        "test_step",
        lambda _, data: as_vectors(test_step(data)),
        "multi_worker",
    )


def is_chief(strategy=None):
    """Whether this process writes the checkpoints and exports.

    In a multi-worker cluster that is the `chief` task, or worker 0 when the
    cluster has no chief; on a single machine it is always `True`.

    Args:
        strategy: a `tf.distribute.Strategy`; `None` uses the strategy of
            the enclosing `strategy.scope()`, and outside any scope reads
            the `TF_CONFIG` environment variable. Defaults to `None`.

    Returns:
        bool.
    """
    tf = _tf()
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if strategy is not None:
        return bool(strategy.extended.should_checkpoint)
    if not os.environ.get("TF_CONFIG"):
        return True
    config = validate_tf_config()
    task_type, index = config["task"]["type"], config["task"]["index"]
    if task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in config["cluster"]


def save_on_chief(model, filepath, strategy=None, save_fn=None):
    """Saves a model from a multi-worker job: the chief writes `filepath`.

    Every worker must call this at the same point: reading distributed
    variables can need all workers. The chief writes to `filepath`; the
    other workers write to a temporary directory that is deleted at once,
    so that they never race the chief on a shared file system.

    Args:
        model: the trained `keras.Model`.
        filepath: where the chief saves: a `.keras` file (whole model), a
            `.weights.h5` file (weights), or a directory for a TensorFlow
            SavedModel (`model.export`) when `save_fn` is `None`.
        strategy: a `tf.distribute.Strategy`; `None` decides as
            `is_chief(None)` does. Defaults to `None`.
        save_fn: optional callable `save_fn(model, path)` that writes the
            model to `path` (e.g. a serving export). Defaults to `None`.

    Returns:
        `filepath` on the chief, `None` on the other workers.

    Example:

    ```python
    model.fit(train, epochs=10)
    keras_unetpp.save_on_chief(model, "unetpp.keras", strategy)
    ```
    """
    filepath = os.fspath(filepath)
    if save_fn is None:
        save_fn = _default_save_fn(filepath)
    if is_chief(strategy):
        parent = os.path.dirname(filepath)
        if parent:
            os.makedirs(parent, exist_ok=True)
        save_fn(model, filepath)
        return filepath
    scratch = tempfile.mkdtemp(prefix="keras_unetpp_worker_")
    try:
        save_fn(model, os.path.join(scratch, os.path.basename(filepath)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def _default_save_fn(filepath):
    if filepath.endswith(".keras"):
        return lambda model, path: model.save(path)
    if filepath.endswith(".weights.h5"):
        return lambda model, path: model.save_weights(path)
    if os.path.splitext(filepath)[1]:
        raise InputError(
            "`filepath` must end in '.keras' or '.weights.h5', or name a "
            "SavedModel directory (no extension), unless `save_fn` is given. "
            f"Received: filepath={filepath!r}"
        )
    return lambda model, path: model.export(
        path, format="tf_saved_model", verbose=False
    )
