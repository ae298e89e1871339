"""`value_and_gradient` on any Keras backend, for the tests."""

import keras
from keras import ops


def value_and_gradient(fn, x):
    """`sum(fn(x))` and its gradient with respect to `x`, as NumPy values.

    Args:
        fn: a function of one tensor, written with `keras.ops`.
        x: a float32 NumPy array.

    Returns:
        `(value, gradient)`: a Python float and a NumPy array shaped like `x`.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(lambda v: ops.sum(fn(v)))(ops.array(x))
    elif backend == "torch":
        import torch

        variable = torch.tensor(x, requires_grad=True)
        value = ops.sum(fn(variable))
        value.backward()
        grad = variable.grad
    else:
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = ops.sum(fn(variable))
        grad = tape.gradient(value, variable)
    return float(ops.convert_to_numpy(value)), ops.convert_to_numpy(grad)
