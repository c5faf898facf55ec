"""Patch datasets: sample patches from GRASS rasters, write and read them.

A dataset is a folder of NumPy arrays and a metadata.json:

- train_images.npy, validation_images.npy: (N, size, size, bands), uint16
  when every band is an integer map within 0..65535, else float32;
- train_labels.npy, validation_labels.npy: (N, size, size) uint8 class
  indices 0..K-1, with 255 for unlabelled (NULL) reference cells;
- metadata.json: bands, classes (value, label, colour), patch size, region,
  projection, band statistics over the labelled area, counts and provenance.
"""

import datetime
import json
import os
import platform

import numpy as np

import grass.script as gs

from . import FORMAT_VERSION, DATASET_FORMAT, __version__
from .errors import IannError
from .folders import atomic_folder
from .grassio import (
    CELL_NULL,
    RowReader,
    raster_info,
    read_categories,
    read_colors,
    read_int_rows,
    read_rows,
    require_rasters,
)

UNLABELLED = 255
MAX_CLASSES = 254
METADATA = "metadata.json"
ARRAYS = {
    "train_images": "train_images.npy",
    "train_labels": "train_labels.npy",
    "validation_images": "validation_images.npy",
    "validation_labels": "validation_labels.npy",
}


def read_band_stack(maps):
    """Read bands on the current region: (rows, cols, bands) float32, NaN = NULL."""
    readers = [RowReader(name) for name in maps]
    try:
        rows = gs.region()["rows"]
        return read_rows(readers, 0, rows)
    finally:
        for reader in readers:
            reader.close()


def read_reference(name):
    """Read an integer reference map: int32 with CELL_NULL for NULL."""
    info = raster_info(name)
    if info["datatype"] != "CELL":
        raise IannError(
            _(
                "Reference map <{}> is not an integer map (type {}); "
                'convert it with r.mapcalc "ref = int(round(map))"'
            ).format(name, info["datatype"])
        )
    reader = RowReader(name)
    try:
        return read_int_rows(reader, 0, gs.region()["rows"])
    finally:
        reader.close()


def class_table(reference, values):
    """Classes of a reference map: value, label (from categories) and colour."""
    labels = read_categories(reference)
    colors = read_colors(reference, values)
    return [
        {
            "index": i,
            "value": int(v),
            "label": labels.get(int(v)) or str(int(v)),
            "color": colors.get(v),
        }
        for i, v in enumerate(values)
    ]


def encode_labels(reference_cells, values):
    """Map class values to indices 0..K-1 (uint8); NULL cells become UNLABELLED."""
    labelled = reference_cells != CELL_NULL
    indices = np.searchsorted(values, reference_cells)
    indices = np.clip(indices, 0, len(values) - 1)
    encoded = np.where(labelled, indices, UNLABELLED).astype(np.uint8)
    return encoded


def window_sums(cells, size):
    """Sum of `cells` over every size x size window, indexed by its top-left cell."""
    integral = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(cells, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
    return (
        integral[size:, size:]
        - integral[:-size, size:]
        - integral[size:, :-size]
        + integral[:-size, :-size]
    )


def valid_origins(band_nulls, labelled, size, min_labelled):
    """Top-left cells of patches with no NULL band cell and enough labels."""
    need = max(1, int(np.ceil(min_labelled / 100.0 * size * size)))
    ok = window_sums(band_nulls, size) == 0
    ok &= window_sums(labelled, size) >= need
    return np.flatnonzero(ok), ok.shape[1]


def band_statistics(stack, labelled):
    """Per-band statistics over labelled cells with data, for normalisation."""
    stats = {key: [] for key in ("mean", "std", "min", "max", "p2", "p98")}
    for band in range(stack.shape[2]):
        values = stack[..., band][labelled]
        values = values[~np.isnan(values)].astype(np.float64)
        if values.size == 0:
            raise IannError(_("Band {} has no data in the labelled area").format(band))
        p2, p98 = np.percentile(values, [2, 98])
        stats["mean"].append(float(values.mean()))
        stats["std"].append(float(values.std()) or 1.0)
        stats["min"].append(float(values.min()))
        stats["max"].append(float(values.max()))
        stats["p2"].append(float(p2))
        stats["p98"].append(float(p98))
    return stats


def image_dtype(band_infos):
    """uint16 when every band is an integer map within 0..65535, else float32."""
    for info in band_infos:
        if info["datatype"] != "CELL":
            return np.float32
        try:
            low, high = float(info["min"]), float(info["max"])
        except (TypeError, ValueError):
            return np.float32
        if low < 0 or high > 65535:
            return np.float32
    return np.uint16


def software_versions():
    """Versions recorded in metadata for provenance."""
    versions = {
        "i.ann": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        versions["grass"] = gs.version()["version"]
    except Exception:  # noqa: BLE001 - provenance must not stop the run
        versions["grass"] = None
    return versions


def create_patches(
    bands,
    reference,
    size,
    number,
    validation,
    seed,
    min_labelled=50.0,
):
    """Sample patches from the current region and return arrays and metadata.

    Patch origins are drawn uniformly, without replacement, among the patches
    that lie fully inside the region, have no NULL band cell and at least
    `min_labelled` percent labelled cells; a fraction `validation` of them
    goes to the validation set.
    """
    bands = require_rasters(bands)
    (reference,) = require_rasters([reference])
    region = gs.region()
    if size > region["rows"] or size > region["cols"]:
        raise IannError(
            _("Patch size {} is larger than the region ({} rows x {} cols)").format(
                size, region["rows"], region["cols"]
            )
        )
    band_infos = [raster_info(name) for name in bands]
    ref_cells = read_reference(reference)
    labelled = ref_cells != CELL_NULL
    if not labelled.any():
        raise IannError(
            _("Reference map <{}> has no labelled cells in the region").format(
                reference
            )
        )
    values = np.unique(ref_cells[labelled])
    if len(values) > MAX_CLASSES:
        raise IannError(
            _("Reference map <{}> has {} classes; at most {} are supported").format(
                reference, len(values), MAX_CLASSES
            )
        )
    gs.verbose(_("Reading {} bands").format(len(bands)))
    stack = read_band_stack(bands)
    band_nulls = np.isnan(stack).any(axis=2)
    labels = encode_labels(ref_cells, values)
    del ref_cells

    origins, width = valid_origins(band_nulls, labelled, size, min_labelled)
    rng = np.random.default_rng(seed)
    if len(origins) < number:
        gs.warning(
            _("Only {} patches are possible in the region, {} were asked for").format(
                len(origins), number
            )
        )
    chosen = rng.choice(len(origins), size=min(number, len(origins)), replace=False)
    chosen = origins[chosen]
    if len(chosen) == 0:
        raise IannError(
            _(
                "No patch of {size} x {size} cells without NULL band cells and "
                "with {pct}% labelled cells fits in the region"
            ).format(size=size, pct=min_labelled)
        )
    n_validation = int(round(len(chosen) * validation))
    split = {"validation": chosen[:n_validation], "train": chosen[n_validation:]}

    dtype = image_dtype(band_infos)
    arrays = {}
    counts = {}
    for part, flat in split.items():
        images = np.empty((len(flat), size, size, len(bands)), dtype=dtype)
        patch_labels = np.empty((len(flat), size, size), dtype=np.uint8)
        for i, (row, col) in enumerate(zip(flat // width, flat % width)):
            images[i] = stack[row : row + size, col : col + size]
            patch_labels[i] = labels[row : row + size, col : col + size]
        arrays[part + "_images"] = images
        arrays[part + "_labels"] = patch_labels
        counts[part] = {
            "patches": int(len(flat)),
            "pixels_per_class": np.bincount(
                patch_labels.ravel(), minlength=UNLABELLED + 1
            )[: len(values)].tolist(),
            "unlabelled_pixels": int((patch_labels == UNLABELLED).sum()),
        }
    statistics = band_statistics(stack, labelled)

    metadata = {
        "format": DATASET_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "bands": [
            {
                "index": i,
                "name": name,
                "datatype": info["datatype"],
                "resolution": [float(info["nsres"]), float(info["ewres"])],
            }
            for i, (name, info) in enumerate(zip(bands, band_infos))
        ],
        "reference": reference,
        "classes": class_table(reference, values),
        "unlabelled": UNLABELLED,
        "patch_size": size,
        "image_dtype": np.dtype(dtype).name,
        "statistics": statistics,
        "sampling": {
            "method": "random",
            "split": "random",
            "number_requested": number,
            "validation_fraction": validation,
            "min_labelled_percent": min_labelled,
            "seed": seed,
            "origins": {
                part: [[int(f // width), int(f % width)] for f in flat]
                for part, flat in split.items()
            },
        },
        "counts": counts,
        "region": {k: region[k] for k in region},
        "projection": gs.read_command("g.proj", flags="wf").strip(),
        "software": software_versions(),
        "files": ARRAYS,
    }
    return arrays, metadata


def write_dataset(folder, arrays, metadata, overwrite=False):
    """Write arrays (memory-mapped .npy) and metadata.json into a new folder."""
    with atomic_folder(folder, overwrite) as tmp:
        for key, filename in ARRAYS.items():
            array = arrays[key]
            out = np.lib.format.open_memmap(
                os.path.join(tmp, filename),
                mode="w+",
                dtype=array.dtype,
                shape=array.shape,
            )
            out[...] = array
            out.flush()
            del out
        with open(os.path.join(tmp, METADATA), "w") as f:
            json.dump(metadata, f, indent=1)


def load_dataset(folder):
    """Open a dataset folder: metadata and memory-mapped arrays."""
    path = os.path.join(folder, METADATA)
    if not os.path.isdir(folder):
        raise IannError(_("Dataset folder <{}> does not exist").format(folder))
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as error:
        raise IannError(
            _("<{}> is not a dataset written by i.ann.patches ({})").format(
                folder, error
            )
        )
    if metadata.get("format") != DATASET_FORMAT:
        raise IannError(
            _("<{}> is not a dataset written by i.ann.patches").format(folder)
        )
    arrays = {}
    for key, filename in metadata["files"].items():
        try:
            arrays[key] = np.load(os.path.join(folder, filename), mmap_mode="r")
        except (OSError, ValueError) as error:
            raise IannError(
                _("Dataset <{}>: cannot read <{}> ({})").format(folder, filename, error)
            )
    return metadata, arrays
