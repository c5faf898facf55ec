"""Patch datasets on disk: their files, and reading them.

A dataset is a folder of NumPy arrays and a metadata.json:

- train_images.npy, validation_images.npy: (N, size, size, bands), uint16
  when every band is an integer map within 0..65535, else float32;
- train_labels.npy, validation_labels.npy: (N, size, size) uint8 class
  indices 0..K-1, with 255 (UNLABELLED) for unlabelled reference cells;
- metadata.json: bands, classes (value, label, colour), patch size, region,
  projection, band statistics over the labelled area, counts and provenance.

patches/plan.py plans what is written, patches/write.py writes it.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np

from iann.errors import IannError
from iann.formats.folders import JsonMetadata, read_metadata_file

DATASET_FORMAT = "i.ann.patches"
DATASET_FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
ARRAYS = {
    "train_images": "train_images.npy",
    "train_labels": "train_labels.npy",
    "validation_images": "validation_images.npy",
    "validation_labels": "validation_labels.npy",
}
# The label of cells without reference class (patches' own nodata).
UNLABELLED = 255


@dataclass(kw_only=True)
class DatasetMetadata(JsonMetadata):
    """metadata.json of a patch dataset.

    The fields are the JSON's keys, in its order; defaults live here.
    """

    format: str = DATASET_FORMAT
    format_version: int = DATASET_FORMAT_VERSION
    bands: list  # {"name", "resampled", ...} per band, in the arrays' order
    reference: str = None
    reference_vector: dict = None
    classes: list  # {"index", "value", "label", "color"}
    unlabelled: int = UNLABELLED
    patch_size: int
    image_dtype: str = "float32"
    # {"mean": [...], "std": [...], "min", "max", "p2", "p98"}: per band,
    # over the labelled cells
    statistics: dict
    statistics_area: str = None
    sampling: dict  # settings, origins, numbers requested and obtained
    counts: dict  # patches and cells per class, per split
    region: dict
    mask: bool = False
    projection: str = ""
    software: dict = field(default_factory=dict)
    files: dict = field(default_factory=lambda: dict(ARRAYS))


def write_metadata(folder, metadata):
    """metadata.json of a dataset folder being written."""
    with open(os.path.join(folder, METADATA_FILE), "w") as f:
        json.dump(metadata.to_json(), f, indent=1)


def summary(metadata):
    """Patch and cell counts per class and split, as text (the -p output)."""
    lines = []
    counts = metadata.counts
    parts = [p for p in ("train", "validation") if p in counts]
    lines.append(
        "Patches: {} of {} x {} cells ({} asked for)".format(
            " + ".join("{} {}".format(counts[p]["patches"], p) for p in parts),
            metadata.patch_size,
            metadata.patch_size,
            metadata.sampling["number_requested"],
        )
    )
    width = max(len(c["label"]) for c in metadata.classes)
    lines.append(
        "{:>6}  {:<{w}}  ".format("value", "class", w=width)
        + "  ".join("{:>12}".format(p + " cells") for p in parts)
    )
    for i, c in enumerate(metadata.classes):
        lines.append(
            "{:>6}  {:<{w}}  ".format(c["value"], c["label"], w=width)
            + "  ".join(
                "{:>12}".format(counts[p]["pixels_per_class"][i]) for p in parts
            )
        )
    lines.append(
        "{:>6}  {:<{w}}  ".format("", "unlabelled", w=width)
        + "  ".join("{:>12}".format(counts[p]["unlabelled_pixels"]) for p in parts)
    )
    return "\n".join(lines)


def load_dataset(folder):
    """Open a dataset folder: metadata and memory-mapped arrays."""
    if os.path.isfile(folder):
        raise IannError(
            _("Dataset <{}> is a file, not a folder written by i.ann.patches").format(
                folder
            )
        )
    if not os.path.isdir(folder):
        raise IannError(_("Dataset folder <{}> does not exist").format(folder))
    what = _("a dataset written by i.ann.patches")
    data = read_metadata_file(
        folder, METADATA_FILE, DATASET_FORMAT, DATASET_FORMAT_VERSION, what
    )
    try:
        metadata = DatasetMetadata.from_json(data)
    except TypeError as error:
        raise IannError(_("<{}> is not {} ({})").format(folder, what, error))
    arrays = {}
    for key, filename in metadata.files.items():
        path = os.path.join(folder, filename)
        try:
            arrays[key] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise IannError(
                _("Dataset <{}>: cannot read <{}> ({})").format(folder, filename, error)
            )
        problem = array_problem(key, arrays[key], metadata)
        if problem:
            raise IannError(_("Dataset file <{}>: {}").format(path, problem))
    return metadata, arrays


# Cells checked at a time: one pass over a file in bounded memory.
CHECK_CHUNK = 1 << 22


def array_problem(key, array, metadata):
    """What is wrong with a dataset array against its metadata, or None.

    Checked where the dataset is read, before training sees it: the shape
    and type the metadata promise, labels within the classes (or
    UNLABELLED), and no NaN in float images. One pass over each file.
    """
    size, n_bands = metadata.patch_size, len(metadata.bands)
    if key.endswith("_images"):
        shape, dtype = (size, size, n_bands), np.dtype(metadata.image_dtype)
    else:
        shape, dtype = (size, size), np.dtype(np.uint8)
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
        return _("patches of shape {} where the metadata says {}").format(
            array.shape[1:], shape
        )
    if array.dtype != dtype:
        return _("type {} where the metadata says {}").format(array.dtype, dtype)
    flat = array.reshape(-1)
    n_classes = len(metadata.classes)
    for start in range(0, flat.size, CHECK_CHUNK):
        chunk = np.asarray(flat[start : start + CHECK_CHUNK])
        if key.endswith("_labels"):
            bad = (chunk >= n_classes) & (chunk != metadata.unlabelled)
            if bad.any():
                return _(
                    "label {} outside the {} classes of the metadata (0 to {}, "
                    "or {} for unlabelled cells)"
                ).format(
                    int(chunk[bad][0]), n_classes, n_classes - 1, metadata.unlabelled
                )
        elif dtype.kind == "f" and np.isnan(chunk).any():
            return _("NaN in the band values (patch {})").format(
                (start + int(np.flatnonzero(np.isnan(chunk))[0])) // int(np.prod(shape))
            )
    return None
