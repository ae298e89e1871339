"""Training with recomputed nodes: less activation memory for more compute.

Backpropagation keeps every intermediate tensor of the forward pass until
its gradient is computed. In a UNet++ most of them are inside the nodes: the
concatenation of X(i,0..j-1) and U(X(i+1,j-1)), then, per convolution, its
output, the normalized and the activated tensor. `recompute_nodes(model)`
makes a training step keep only each node's output: the backward pass runs
the node's forward again (from the outputs of the nodes it reads) and
differentiates that, one node at a time. The peak memory of a training
step falls by about half (depth 4, 256x256, batch 8: 2264 vs 4241 MB; see
`docs/performance.md`), at the cost of a second forward pass through the
nodes (a third more FLOPs; 1.3-1.4x the step time on a CPU).

It changes how the model trains, not what it computes: the model, its
layers and what is saved stay the same, inference is untouched, and the
gradients and the batch-normalization statistics equal those of a plain
step (the recomputation restores the moving averages that the first pass
left). TensorFlow only: the backward recomputation is a `tf.custom_gradient`.
"""

import threading
import weakref

import keras
import tensorflow as tf

from keras_unetpp import keras_patches
from keras_unetpp.description import describe, node_name, output_name, parse_node
from keras_unetpp.errors import InputError

_FEATURE = "recompute"


def recompute_nodes(model):
    """Trains `model` with each node's activations recomputed in the backward pass.

    From then on, every training call of the model (`fit`, `train_on_batch`,
    `model(x, training=True)` under a `tf.GradientTape`) keeps only the
    outputs of the nodes X(i,j) and recomputes everything inside a node
    (concatenation, convolutions, normalizations, activations) when its
    gradient is needed. Inference calls are unchanged. Calling it again is a
    no-op; the model's compiled step functions are reset.

    Args:
        model: a `keras.Model` from `keras_unetpp.build` or `build_unet`
            (any depth, with or without deep supervision), on the
            TensorFlow backend. Its nodes must be deterministic: dropout is
            refused, because the recomputation would draw another mask.

    Returns:
        int, the number of recomputed nodes.

    Example:

    ```python
    model = keras_unetpp.build(depth=4, input_shape=(512, 512, 1))
    keras_unetpp.recompute_nodes(model)  # fits larger batches or images
    model.compile(optimizer="adam", loss=keras_unetpp.BCEDiceLoss())
    model.fit(dataset, epochs=100)
    model.save("unetpp.keras")  # a plain UNet++ file
    ```
    """
    if keras.backend.backend() != "tensorflow":
        raise InputError(
            "recompute_nodes() recomputes with TensorFlow custom gradients and "
            "needs the TensorFlow backend (KERAS_BACKEND=tensorflow). Received: "
            f"backend={keras.backend.backend()!r}"
        )
    if not isinstance(model, keras.Model):
        raise InputError(
            f"recompute_nodes() needs a keras_unetpp model. Received: {model!r}"
        )
    info = describe(model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout) and layer.rate > 0:
            raise InputError(
                "recompute_nodes() needs deterministic nodes, but layer "
                f"{layer.name!r} is a dropout (the recomputation would draw "
                "another mask and the gradients would be wrong). Build the "
                f"model with dropout=0. Received: {layer.name} rate={layer.rate}"
            )
    if not is_recomputing(model):
        plan = _Plan(model, info)
        keras_patches.patch(model, "call", _recomputing_call, _FEATURE, value=plan)
    return len(keras_patches.patched(model, _FEATURE).nodes)


def is_recomputing(model):
    """Whether `recompute_nodes` was applied to `model`."""
    return keras_patches.patched(model, _FEATURE) is not None


class _Node:
    """One node X(i,j) as a sub-model from the node outputs it reads."""

    def __init__(self, model, key, input_keys, output_tensor, input_tensors):
        self.key = key
        self.input_keys = input_keys
        self.model = keras.Model(
            input_tensors, output_tensor, name=f"{model.name}_{node_name(*key)}"
        )


class _Plan:
    """The model's nodes in execution order, and its heads."""

    def __init__(self, model, info):
        outputs = {}  # (i, j) -> the Keras tensor of X(i,j)'s output
        for layer in model.layers:
            node = parse_node(layer.name)
            if node is not None:
                # Layers are in topological order: the last one of a node
                # produces its output.
                outputs[node] = layer.output
        self.input_tensor = model.inputs[0]
        self.nodes = []
        for key in self._order(outputs, info.depth):
            i, j = key
            if j == 0:
                input_keys = ["image"] if i == 0 else [(i - 1, 0)]
            else:
                input_keys = [(i, k) for k in range(j) if (i, k) in outputs]
                input_keys.append((i + 1, j - 1))
            tensors = [
                self.input_tensor if k == "image" else outputs[k] for k in input_keys
            ]
            self.nodes.append(_Node(model, key, input_keys, outputs[key], tensors))
        self.heads = {}  # output name -> (level, the head as a sub-model)
        for level in info.heads:
            name = output_name(level)
            head = keras.Model(
                outputs[0, level], model.get_layer(name).output, name=name
            )
            self.heads[name] = (level, head)
        self.dict_output = isinstance(model.output, dict)

    @staticmethod
    def _order(outputs, depth):
        keys = [(i, 0) for i in range(depth + 1)]
        for j in range(1, depth + 1):
            keys += [(i, j) for i in range(depth - j + 1) if (i, j) in outputs]
        return keys


def _recomputing_call(model, inputs, training=None, mask=None):
    """The model's `call`: nodes recomputed in the backward pass when training."""
    if not training:
        return type(model).call(model, inputs, training=training, mask=mask)
    plan = keras_patches.patched(model, _FEATURE)
    if not tf.is_tensor(inputs) and not hasattr(inputs, "shape"):
        # A one-element list or dict, as Keras also accepts.
        (inputs,) = keras.tree.flatten(inputs)
    values = {"image": inputs}
    for node in plan.nodes:
        args = [values[key] for key in node.input_keys]
        values[node.key] = _recomputed(node.model, args)
    heads = {
        name: head(values[0, level], training=True)
        for name, (level, head) in plan.heads.items()
    }
    if plan.dict_output:
        return heads
    (only,) = heads.values()
    return only


def _recomputed(node_model, args):
    """`node_model(args)` whose backward pass recomputes it from `args`."""

    @tf.custom_gradient
    def forward(*args):
        outputs = node_model(list(args), training=True)

        def backward(upstream, variables=None):
            variables = list(variables or ())
            inputs = _after([upstream] + _previous_gradients(), args)
            # What the forward pass left in the node's state (the moving
            # statistics of its batch norms), which the recomputation would
            # update a second time.
            state = node_model.non_trainable_variables
            saved = [tf.identity(tf.convert_to_tensor(v)) for v in state]
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                again = node_model(list(inputs), training=True)
            gradients = tape.gradient(
                again, list(inputs) + variables, output_gradients=upstream
            )
            for variable, value in zip(state, saved):
                variable.assign(value)
            _remember_gradients(gradients)
            return gradients[: len(args)], gradients[len(args) :]

        return outputs, backward

    return forward(*args)


# The gradients of the node whose backward pass was built last, per graph.
_LAST = threading.local()


def _previous_gradients():
    """The input gradients of the node recomputed before, in a traced graph.

    A backward pass is built once its upstream gradients exist, so the node
    built before this one never waits for it: making this recomputation wait
    for that node's gradients is safe, and runs the recomputations one at a
    time, in order, instead of as many at once as the dense skips make ready
    (which raised the peak memory, and made it vary from run to run). Eager
    execution runs them one at a time anyway.
    """
    if tf.executing_eagerly():
        return []
    graph, tensors = getattr(_LAST, "entry", (None, []))
    if graph is None or graph() is not tf.compat.v1.get_default_graph():
        return []
    return [tensor() for tensor in tensors if tensor() is not None]


def _remember_gradients(gradients):
    if tf.executing_eagerly():
        return
    tensors = [g for g in gradients if g is not None and tf.is_tensor(g)][:1]
    # Weak references: a traced step's graph is not kept alive by this.
    _LAST.entry = (
        weakref.ref(tf.compat.v1.get_default_graph()),
        [weakref.ref(tensor) for tensor in tensors],
    )


def _after(tensors, args):
    """`args`, made to depend on `tensors` so that nothing runs before them.

    The recomputation needs only the node's inputs, which exist since the
    forward pass: without a dependency, the graph executor would recompute
    every node as early as it can, all at once, and keep it all until its
    gradient comes, which is more memory, not less. A data dependency (not a
    control dependency, which XLA ignores) on one element of each tensor (the
    upstream gradient, and the gradients of the node recomputed before)
    holds each recomputation back until it is due. The added value is 0 (NaN
    if a gradient is NaN, which the step's gradients then are anyway).
    """
    zero = 0.0
    for tensor in tensors:
        first = tf.cast(tf.reshape(tensor, [-1])[:1], tf.float32)
        zero += tf.reduce_sum(
            tf.where(tf.math.is_nan(first), first, tf.zeros_like(first))
        )
    return [arg + tf.cast(zero, arg.dtype) for arg in args]
