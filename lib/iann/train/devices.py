"""Where and in which precision a network trains: GPUs, data parallelism."""

import contextlib

import keras

import grass.script as gs

from iann.nn.devices import accelerators, usable_precision


def training_device():
    """The device the Keras backend trains on, in words."""
    gpus = accelerators()
    backend = keras.backend.backend()
    if gpus:
        return "{} backend on {}".format(backend, ", ".join(str(g) for g in gpus))
    return "{} backend on CPU".format(backend)


def data_parallel_scope():
    """Data parallelism over all GPUs of the machine, when there are several.

    JAX: Keras's own DataParallel distribution. TensorFlow: its
    MirroredStrategy, the way Keras documents multi-GPU training for that
    backend (the one place the library names TensorFlow; model and loss
    code stay backend-neutral). One device: nothing to do.
    """
    gpus = accelerators()
    if len(gpus) < 2:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if backend == "jax":
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=gpus)
        )
        return contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf  # only for its distribution strategy

        return tf.distribute.MirroredStrategy().scope()
    gs.warning(
        _("{} GPUs seen, but the {} backend trains on one").format(len(gpus), backend)
    )
    return contextlib.nullcontext()


def training_precision(precision):
    """The precision to train in: float16 only where a GPU is (a warning)."""
    # The backend's own devices decide: a GPU it trains on need not be
    # an NVIDIA one (gpu_present looks for NVIDIA's driver only).
    precision, problem = usable_precision(precision, gpu=bool(accelerators()))
    if problem:
        gs.warning(problem)
    return precision


@contextlib.contextmanager
def precision_policy(precision):
    """Layers built inside compute in `precision` (a Keras dtype policy).

    Keras wraps the optimizer of a mixed_float16 model in its loss scaling
    at compile time; the softmax of the built-in heads stays float32.
    """
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
