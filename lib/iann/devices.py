"""Where and in which precision a network trains: GPUs, data parallelism."""

import contextlib

import keras

import grass.script as gs


def accelerators():
    """The GPUs the Keras backend sees."""
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # noqa: BLE001 - some backends cannot list devices
        devices = []
    return [d for d in devices if "gpu" in str(d).lower() or "cuda" in str(d).lower()]


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


def usable_precision(precision):
    """The precision to compute in: float16 only where a GPU is."""
    if precision == "mixed_float16" and not accelerators():
        gs.warning(
            _("precision=mixed_float16 needs a GPU; computing in float32 on the CPU")
        )
        return "float32"
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
