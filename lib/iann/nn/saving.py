"""The Keras side of a model bundle: its network loaded, in a precision."""

import os

from iann.errors import IannError
from iann.formats.bundle import (
    CUSTOM_ARCHITECTURE,
    MODEL_FILE,
    check_model_file,
    read_bundle_metadata,
)
from iann.nn.architectures import load_custom_builder, with_precision


def load_bundle(folder, precision="float32"):
    """Metadata and Keras model of a bundle."""
    metadata = read_bundle_metadata(folder)
    return metadata, load_model(folder, metadata, precision)


def load_model(folder, metadata, precision="float32"):
    """The Keras model of a bundle, computing in `precision`.

    A mixed precision (mixed_bfloat16, mixed_float16) gives a copy of the
    network whose layers compute in 16 bits with the same (float32)
    weights; the probabilities stay float32.
    """
    import keras

    check_model_file(folder)
    custom = os.path.join(folder, CUSTOM_ARCHITECTURE)
    if os.path.isfile(custom):
        load_custom_builder(custom)
    try:
        model = keras.saving.load_model(os.path.join(folder, MODEL_FILE), compile=False)
    except Exception as error:  # noqa: BLE001 - any load failure means a bad file
        raise IannError(
            _("Cannot load the model of bundle <{}>: {}").format(folder, error)
        )
    if precision != "float32":
        model = with_precision(model, precision)
    return model
