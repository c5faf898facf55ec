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


def save_bundle(folder, model, metadata):
    """Write model and metadata into `folder` (an existing, empty folder)."""
    model.save(os.path.join(folder, MODEL_FILE))
    source = metadata.get("architecture_file")
    if source:
        shutil.copyfile(source, os.path.join(folder, CUSTOM_ARCHITECTURE))
    with open(os.path.join(folder, METADATA), "w") as f:
        json.dump(metadata, f, indent=1)


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


def load_bundle(folder):
    """Metadata and Keras model of a bundle."""
    import keras

    metadata = read_bundle_metadata(folder)
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
    return metadata, model
