"""The devices a network can run on: GPUs, and the precisions they allow."""

import os


def gpu_present():
    """Whether an NVIDIA GPU is visible to this process (without a backend)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    folder = "/proc/driver/nvidia/gpus"
    return os.path.isdir(folder) and bool(os.listdir(folder))


def accelerators():
    """The GPUs the Keras backend sees."""
    import keras

    try:
        devices = keras.distribution.list_devices()
    except Exception:  # noqa: BLE001 - some backends cannot list devices
        devices = []
    return [d for d in devices if "gpu" in str(d).lower() or "cuda" in str(d).lower()]


def usable_precision(precision, gpu=False):
    """The precision to compute in, and why it differs from `precision`.

    float16 only where a GPU is: `gpu` when the caller knows it will run
    on one (GPU workers of a cluster), else when this process sees one.
    """
    if precision != "mixed_float16" or gpu or (gpu_present() and accelerators()):
        return precision, None
    return "float32", _(
        "precision=mixed_float16 needs a GPU; computing in float32 on the CPU"
    )
