"""A trained network written as a model bundle (formats/bundle.py)."""

import os
import shutil

from iann.formats.bundle import CUSTOM_ARCHITECTURE, MODEL_FILE, write_metadata
from iann.predict.onnx_export import add_onnx


def save_bundle(folder, model, metadata, export=True):
    """Write model and metadata into `folder` (an existing, empty folder).

    With `export`, model.onnx too (predict/onnx_export.py). Returns the
    metadata as written and, when the network could not be exported, why.
    """
    model.save(os.path.join(folder, MODEL_FILE))
    source = metadata.architecture_file
    if source:
        shutil.copyfile(source, os.path.join(folder, CUSTOM_ARCHITECTURE))
    problem = None
    if export:
        metadata, problem = add_onnx(folder, model, metadata)
    write_metadata(folder, metadata)
    return metadata, problem
