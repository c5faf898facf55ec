"""Model bundles on disk: a folder with the Keras model and its metadata.

- model.keras: the trained Keras model (the best epoch);
- metadata.json: bands, classes (value, label, colour), normalisation,
  receptive field, architecture and parameters, training history, the
  decision rule (optional), and the dataset's provenance;
- model.onnx (optional): the same network for ONNX Runtime, OpenVINO and
  QGIS (predict/onnx_export.py);
- model.int8.onnx (optional): model.onnx quantised to int8, calibrated
  on training patches, with its checks per kind of CPU
  (predict/precision.py);
- architecture.py (optional): a copy of a user's architecture file,
  imported before the model is loaded so that custom layers it registers
  are known.

A bundle imported from an ONNX segmentation model trained elsewhere
(predict/onnx_import.py) has model.onnx and metadata.json only, with the
import's record under `imported`; it runs on the ONNX engines.

This module reads and writes the metadata and checks the files; the Keras
side (loading the model) is nn/saving.py, writing a trained model is
train/saving.py.
"""

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field

from iann.errors import IannError
from iann.formats.folders import JsonMetadata, read_metadata_file

BUNDLE_FORMAT = "i.ann.model"
BUNDLE_FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CUSTOM_ARCHITECTURE = "architecture.py"


@dataclass(kw_only=True)
class BundleMetadata(JsonMetadata):
    """metadata.json of a bundle: what the network needs and how it was made.

    The fields are the JSON's keys, in its order; defaults live here.
    """

    format: str = BUNDLE_FORMAT
    format_version: int = BUNDLE_FORMAT_VERSION
    architecture: str  # fcn, unet, or the path of the user's file
    architecture_file: str = None
    parameters: dict  # the builder's keyword arguments
    size_multiple: int = 1  # a tile's side must be a multiple of this
    bands: list  # {"name", ...} in the network's input order
    classes: list  # {"index", "value", "label", "color"}
    normalisation: dict  # {"method", "mean", "std"} per band
    dataset_statistics: dict = None  # the dataset's statistics (per band)
    patch_size: int = None
    receptive_field: int
    receptive_field_method: str = None
    margin: int  # cells read around a tile (predict/tiling.py)
    training: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)  # region, projection, sampling
    software: dict = field(default_factory=dict)
    onnx: dict = None  # the export's record (predict/onnx_export.py)
    # An imported model's record (predict/onnx_import.py): source file and
    # SHA-256, fixed input size, output kind, how the margin was found.
    imported: dict = None
    # The decision rule learnt on the validation patches (predict/decision.py):
    # the rule, a bias per class, the validation figures; None: argmax.
    decision: dict = None
    # Reduced precisions of the CPU engines (predict/precision.py): the
    # int8 model's record (file, SHA-256, its model.onnx's, calibration)
    # and the checks, per precision, engine and kind of CPU.
    reduced_precision: dict = None
    LEFT_OUT_WHEN_NONE = ("onnx", "imported", "decision", "reduced_precision")

    @property
    def input_size(self):
        """The side of the only tiles the network takes, or None (any)."""
        return (self.imported or {}).get("input_size")

    @property
    def model_files(self):
        """The files that make the bundle's maps."""
        return (
            (METADATA_FILE, ONNX_FILE) if self.imported else (METADATA_FILE, MODEL_FILE)
        )


def write_metadata(folder, metadata):
    """metadata.json, replaced in one step."""
    path = os.path.join(folder, METADATA_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(metadata.to_json(), f, indent=1)
    os.replace(path + ".tmp", path)


def read_bundle_metadata(folder):
    """Metadata of a bundle, with a clear error for anything else."""
    if not os.path.isdir(folder):
        raise IannError(_("Model bundle <{}> does not exist").format(folder))
    data = read_metadata_file(
        folder,
        METADATA_FILE,
        BUNDLE_FORMAT,
        BUNDLE_FORMAT_VERSION,
        _("a model bundle written by i.ann.train"),
    )
    try:
        metadata = BundleMetadata.from_json(data)
    except TypeError as error:
        raise IannError(
            _("<{}> is not a model bundle written by i.ann.train ({})").format(
                folder, error
            )
        )
    needed = ONNX_FILE if metadata.imported else MODEL_FILE
    if not os.path.isfile(os.path.join(folder, needed)):
        raise IannError(_("Model bundle <{}> has no {}").format(folder, needed))
    return metadata


def check_model_file(folder):
    """A clear error when the bundle's model.keras is damaged or truncated.

    model.keras is a zip archive: a truncated copy has no central
    directory, a damaged one fails the checksum of a member. Keras itself
    reports both as "File not found".
    """
    path = os.path.join(folder, MODEL_FILE)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as error:
        problem = str(error)
    except OSError as error:
        raise IannError(
            _("Model file <{}> cannot be read: {}").format(path, error.strerror)
        )
    else:
        problem = None
        if damaged is not None:
            problem = _("{} fails its checksum").format(damaged)
        elif "config.json" not in names:
            problem = _("no config.json in it")
    if problem:
        raise IannError(
            _(
                "Model file <{}> is damaged or truncated ({}); copy the bundle "
                "again or train it again"
            ).format(path, problem)
        )


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def bundle_identity(folder, files=(METADATA_FILE, MODEL_FILE)):
    """SHA-256 of the bundle's files that make its maps: its content, not its name."""
    return {
        name: sha256_of(os.path.join(folder, name))
        for name in files
        if os.path.isfile(os.path.join(folder, name))
    }
