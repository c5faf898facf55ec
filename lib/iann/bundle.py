"""Model bundles: a folder with the Keras model and its metadata.

- model.keras: the trained Keras model (the best epoch);
- metadata.json: bands, classes (value, label, colour), normalisation,
  receptive field, architecture and parameters, training history, and the
  dataset's provenance.
"""

import hashlib
import json
import math
import os
import re
import shutil
import zipfile
import zlib

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


def bundle_identity(folder, files=(METADATA, MODEL_FILE)):
    """SHA-256 of the bundle's files that make its maps: its content, not its name."""
    return {
        name: sha256_of(os.path.join(folder, name))
        for name in files
        if os.path.isfile(os.path.join(folder, name))
    }


# A region whose cells differ from the training data's by more than this
# factor (either way) gets a warning; the i.ann.classify manual says so.
RESOLUTION_FACTOR = 1.5
# Metres in a degree of latitude (mean Earth radius 6371.0088 km).
METRES_PER_DEGREE = 2 * math.pi * 6371008.8 / 360


def units_of_wkt(wkt):
    """Metres per map unit of a projection (WKT), "degrees", or None."""
    if not wkt:
        return None
    kind = wkt.lstrip().split("[", 1)[0].strip().upper()
    if kind in ("GEOGCS", "GEOGCRS", "GEODCRS", "GEOGRAPHICCRS"):
        return "degrees"
    # The CRS's own (axis) unit is the last length unit of WKT1 and WKT2.
    # (UNIT of WKT1, LENGTHUNIT of WKT2; not ANGLEUNIT or SCALEUNIT).
    unit = r'(?<![A-Z])(?:LENGTHUNIT|UNIT)\[\s*"[^"]*"\s*,\s*([-+0-9.eE]+)'
    factors = re.findall(unit, wkt)
    return float(factors[-1]) if factors else None


def cell_size_metres(nsres, ewres, units, latitude=0.0):
    """Side in metres of a square of a cell's area, for map units `units`.

    `units`: metres per map unit, or "degrees" (latitude-longitude: a
    degree of longitude shrinks with the cosine of `latitude`).
    """
    if units == "degrees":
        ns = nsres * METRES_PER_DEGREE
        ew = ewres * METRES_PER_DEGREE * math.cos(math.radians(latitude))
    else:
        ns, ew = nsres * units, ewres * units
    return math.sqrt(abs(ns * ew))


def training_cell_size(metadata):
    """Cell size in metres of the bundle's training data, or None if unknown."""
    dataset = metadata.get("dataset") or {}
    region = dataset.get("region") or {}
    if "nsres" not in region or "ewres" not in region:
        return None
    if int(region.get("projection", -1)) == 3:
        units = "degrees"
    elif int(region.get("projection", -1)) == 0:
        units = 1.0  # an unprojected (XY) project: no unit to convert
    else:
        units = units_of_wkt(dataset.get("projection"))
    if units is None:
        return None
    latitude = (float(region["n"]) + float(region["s"])) / 2 if "n" in region else 0
    return cell_size_metres(
        float(region["nsres"]), float(region["ewres"]), units, latitude
    )


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
