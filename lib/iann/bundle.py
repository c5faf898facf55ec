"""Model bundles: a folder with the Keras model and its metadata.

- model.keras: the trained Keras model (the best epoch);
- metadata.json: bands, classes (value, label, colour), normalisation,
  receptive field, architecture and parameters, training history, and the
  dataset's provenance.
"""

import json
import os
import shutil

from . import BUNDLE_FORMAT
from .errors import IannError

MODEL_FILE = "model.keras"
METADATA = "metadata.json"
# A copy of a user's architecture file, imported before the model is loaded
# so that custom layers it registers are known.
CUSTOM_ARCHITECTURE = "architecture.py"


def save_bundle(folder, model, metadata, export=True):
    """Write model and metadata into `folder` (an existing, empty folder).

    With `export`, model.onnx too (onnx_export.py). Returns the metadata as
    written and, when the network could not be exported, why.
    """
    model.save(os.path.join(folder, MODEL_FILE))
    source = metadata.get("architecture_file")
    if source:
        shutil.copyfile(source, os.path.join(folder, CUSTOM_ARCHITECTURE))
    problem = None
    if export:
        metadata, problem = add_onnx(folder, model, metadata)
    write_metadata(folder, metadata)
    return metadata, problem


def add_onnx(folder, model, metadata):
    """Export model.onnx into the bundle; the metadata with its record."""
    from .onnx_export import export_onnx

    record, problem = export_onnx(folder, model, metadata)
    if record is None:
        return {k: v for k, v in metadata.items() if k != "onnx"}, problem
    return dict(metadata, onnx=record), None


def write_metadata(folder, metadata):
    """metadata.json, replaced in one step."""
    path = os.path.join(folder, METADATA)
    with open(path + ".tmp", "w") as f:
        json.dump(metadata, f, indent=1)
    os.replace(path + ".tmp", path)


def read_bundle_metadata(folder):
    """Metadata of a bundle, with a clear error for anything else."""
    path = os.path.join(folder, METADATA)
    if not os.path.isdir(folder):
        raise IannError(_("Model bundle <{}> does not exist").format(folder))
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as error:
        raise IannError(
            _("<{}> is not a model bundle written by i.ann.train ({})").format(
                folder, error
            )
        )
    if metadata.get("format") != BUNDLE_FORMAT:
        raise IannError(
            _("<{}> is not a model bundle written by i.ann.train").format(folder)
        )
    if not os.path.isfile(os.path.join(folder, MODEL_FILE)):
        raise IannError(_("Model bundle <{}> has no {}").format(folder, MODEL_FILE))
    return metadata


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

    custom = os.path.join(folder, CUSTOM_ARCHITECTURE)
    if os.path.isfile(custom):
        from .models import load_custom_builder

        load_custom_builder(custom)
    try:
        model = keras.saving.load_model(os.path.join(folder, MODEL_FILE), compile=False)
    except Exception as error:  # noqa: BLE001 - any load failure means a bad file
        raise IannError(
            _("Cannot load the model of bundle <{}>: {}").format(folder, error)
        )
    if precision != "float32":
        from .models import with_precision

        model = with_precision(model, precision)
    return model
