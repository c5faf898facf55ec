"""Planning a patch dataset: where patches are cut, and what they hold.

Reads the reference and the bands on the current region, draws the
patches' origins for the training and validation parts (see sampling.py)
and gathers the dataset's metadata. Nothing is written to disk here:
write.write_dataset() cuts and writes the plan.
"""

import datetime
import platform
from dataclasses import dataclass

import numpy as np

import grass.script as gs

from iann import __version__
from iann.errors import IannError
from iann.formats.dataset import UNLABELLED, DatasetMetadata
from iann.grass import CELL_NULL
from iann.grass.bands import (
    band_statistics,
    class_table,
    image_dtype,
    read_bands,
    read_reference,
)
from iann.grass.module_output import projection_wkt
from iann.grass.rasters import current_mask, require_rasters
from iann.patches.sampling import (
    MAX_CLASSES,
    draw_origins,
    encode_labels,
    label_patches,
    labelled_cells_needed,
    usable_origins,
    validation_blocks,
    window_sums,
)

PARTS = ("train", "validation")


@dataclass
class Sampling:
    """How i.ann.patches draws and splits patches (the module's options)."""

    size: int
    number: int
    validation: float
    seed: int
    min_labelled: float
    method: str
    stride: int
    split: str
    block_size: float
    resample: str
    keep_nulls: bool
    # Sparse references (vector points, lines, a few polygons): every
    # labelled cell is a candidate patch centre and min_labelled counts cells.
    sparse: bool = False


@dataclass
class PatchPlan:
    """A planned dataset: what write_dataset() cuts and writes."""

    stack: np.ndarray
    labels: dict
    origins: dict
    dtype: type
    validation_cells: np.ndarray
    metadata: dict
    # Origins are flat indices on the grid of possible top-left cells,
    # (rows - size + 1) x (cols - size + 1): `width` is its number of columns.
    width: int


@dataclass
class Draw:
    """Patch origins of each part of the split."""

    origins: dict
    wanted: dict
    validation_cells: np.ndarray = None
    block_ids: np.ndarray = None
    block_size: float = None
    block_cells: tuple = None


def reference_classes(reference, what):
    """The reference cells' labelled mask and class values."""
    cells = read_reference(reference)
    labelled = cells != CELL_NULL
    if not labelled.any():
        raise IannError(_("{} has no labelled cells in the region").format(what))
    values = np.unique(cells[labelled])
    if len(values) > MAX_CLASSES:
        raise IannError(
            _("{} has {} classes; at most {} are supported").format(
                what, len(values), MAX_CLASSES
            )
        )
    return cells, labelled, values


def wanted_counts(sampling):
    """How many patches each part asks for: the validation share of number."""
    n_validation = int(round(sampling.number * sampling.validation))
    return {"train": sampling.number - n_validation, "validation": n_validation}


def draw_patches(labels, usable, sampling, region, rng):
    """Draw the origins of the training and validation patches."""
    size = sampling.size
    wanted = wanted_counts(sampling)
    stride = sampling.stride or size
    if sampling.split == "random":
        drawn = draw_origins(
            usable, sampling.number, sampling.method, rng, size, stride, labels
        )
        n_val = int(round(len(drawn) * sampling.validation))
        origins = {"validation": drawn[:n_val], "train": drawn[n_val:]}
        draw = Draw(origins, wanted)
    else:
        block_size = sampling.block_size or 4 * size * region["nsres"]
        block_cells = (
            max(1, int(round(block_size / region["nsres"]))),
            max(1, int(round(block_size / region["ewres"]))),
        )
        in_validation, block_ids = validation_blocks(
            labels.shape, block_cells, sampling.validation, rng
        )
        share = window_sums(in_validation, size)
        candidates = {
            "train": usable & (share == 0),
            "validation": usable & (share == size * size),
        }
        origins = {
            part: draw_origins(
                candidates[part],
                wanted[part],
                sampling.method,
                rng,
                size,
                stride,
                labels,
            )
            for part in PARTS
        }
        draw = Draw(origins, wanted, in_validation, block_ids, block_size, block_cells)
    # Sorted, so that patches are cut in reading order (faster); training
    # shuffles them anyway.
    draw.origins = {part: np.sort(flat) for part, flat in draw.origins.items()}
    return draw


def split_points(labels, labelled, band_nulls, need, sampling, rng):
    """A random split of a sparse reference: each labelled cell on one side.

    Every labelled cell (a point, the cells of a line or an area) goes to
    validation with the validation fraction's probability, else to
    training. A part's patches are centred on its own cells and see only
    them labelled, so no point is both trained on and validated with, and
    validation keeps its share of the points however much patches overlap.
    Returns the Draw and the label grid of each part.
    """
    size = sampling.size
    wanted = wanted_counts(sampling)
    cells = np.flatnonzero(labelled)
    to_validation = rng.random(len(cells)) < sampling.validation
    origins, part_labels = {}, {}
    for part, chosen in (("train", ~to_validation), ("validation", to_validation)):
        side = np.zeros_like(labelled)
        side.flat[cells[chosen]] = True
        usable = usable_origins(
            band_nulls, side, size, need, sampling.keep_nulls, centred=True
        )
        origins[part] = np.sort(
            draw_origins(
                usable,
                wanted[part],
                sampling.method,
                rng,
                size,
                sampling.stride or size,
                labels,
            )
        )
        part_labels[part] = np.where(side, labels, UNLABELLED).astype(np.uint8)
    return Draw(origins, wanted), part_labels


def count_classes(labels, draw, sampling, n_classes):
    """Patches and labelled cells per class in each part."""
    counts = {}
    for part, flat in draw.origins.items():
        per_class = np.zeros(UNLABELLED + 1, dtype=np.int64)
        width = labels[part].shape[1] - sampling.size + 1
        for chunk in label_patches(labels[part], flat, width, sampling.size):
            per_class += np.bincount(chunk.ravel(), minlength=UNLABELLED + 1)
        counts[part] = {
            "patches": int(len(flat)),
            "requested": (
                int(draw.wanted[part]) if sampling.split == "blocks" else None
            ),
            "pixels_per_class": per_class[:n_classes].tolist(),
            "unlabelled_pixels": int(per_class[UNLABELLED]),
        }
    return counts


def create_patches(bands, reference, sampling, temporary_maps, vector=None):
    """Plan a patch dataset on the current region; nothing is written here.

    `reference` is an integer raster map; `vector` the VectorReference it
    was rasterised from, if any (named in messages and the metadata).
    """
    if sampling.stride is not None and sampling.stride < 1:
        raise IannError(
            _("stride must be at least 1 cell, not {}").format(sampling.stride)
        )
    bands = require_rasters(bands)
    (reference,) = require_rasters([reference])
    what = (
        _("Vector map <{}> (column <{}>)").format(vector.name, vector.column)
        if vector
        else _("Reference map <{}>").format(reference)
    )
    region = gs.region()
    size = sampling.size
    if size > region["rows"] or size > region["cols"]:
        raise IannError(
            _("Patch size {} is larger than the region ({} rows x {} cols)").format(
                size, region["rows"], region["cols"]
            )
        )
    cells, labelled, values = reference_classes(reference, what)
    gs.verbose(_("Reading {} bands").format(len(bands)))
    stack, band_records, band_infos = read_bands(
        bands, sampling.resample, temporary_maps
    )
    band_nulls = np.isnan(stack).any(axis=0)
    labels = encode_labels(cells, values)
    del cells
    statistics = band_statistics(stack, labelled)
    if sampling.keep_nulls:
        # NULL band cells: filled with the band mean (0 once standardised)
        # and unlabelled, so that the loss never sees them.
        for band, mean in enumerate(statistics["mean"]):
            np.nan_to_num(stack[band], copy=False, nan=mean)
        labels[band_nulls] = UNLABELLED
        labelled &= ~band_nulls

    need = labelled_cells_needed(sampling.min_labelled, size, sampling.sparse)
    rng = np.random.default_rng(sampling.seed)
    if sampling.sparse and sampling.split == "random":
        draw, labels = split_points(labels, labelled, band_nulls, need, sampling, rng)
    else:
        usable = usable_origins(
            band_nulls, labelled, size, need, sampling.keep_nulls, sampling.sparse
        )
        draw = draw_patches(labels, usable, sampling, region, rng)
        labels = {part: labels for part in PARTS}
        del usable
    del band_nulls
    width = region["cols"] - size + 1
    obtained = sum(len(o) for o in draw.origins.values())
    if obtained == 0:
        raise IannError(
            _(
                "No patch of {size} x {size} cells without NULL band cells and "
                "with {need} labelled cells fits in the region"
            ).format(size=size, need=need)
        )
    if obtained < sampling.number:
        gs.warning(
            _("Only {} patches could be sampled, {} were asked for").format(
                obtained, sampling.number
            )
        )
    dtype = image_dtype(band_infos, resampled=any(r["resampled"] for r in band_records))
    metadata = DatasetMetadata(
        created=datetime.datetime.now().isoformat(timespec="seconds"),
        bands=band_records,
        reference=vector.name if vector else reference,
        reference_vector=vector.provenance() if vector else None,
        classes=class_table(reference, values),
        patch_size=size,
        image_dtype=np.dtype(dtype).name,
        statistics=statistics,
        statistics_area="labelled reference cells with data in the band",
        sampling=sampling_metadata(sampling, draw, obtained, width),
        counts=count_classes(labels, draw, sampling, len(values)),
        region={k: region[k] for k in region},
        mask=bool(current_mask()),
        projection=projection_wkt(),
        software=software_versions(),
    )
    return PatchPlan(
        stack,
        labels,
        draw.origins,
        dtype,
        draw.validation_cells,
        metadata,
        width,
    )


def sampling_metadata(sampling, draw, obtained, width):
    """The sampling record of the metadata: settings and patch origins."""
    blocks = sampling.split == "blocks"
    return {
        "method": sampling.method,
        "stride": (
            (sampling.stride or sampling.size) if sampling.method == "grid" else None
        ),
        "split": sampling.split,
        "block_size": draw.block_size if blocks else None,
        "block_cells": list(draw.block_cells) if blocks else None,
        "validation_blocks": draw.block_ids.tolist() if blocks else None,
        "number_requested": sampling.number,
        "number_obtained": obtained,
        "validation_fraction": sampling.validation,
        "min_labelled": sampling.min_labelled,
        "min_labelled_unit": "cells" if sampling.sparse else "percent",
        "patch_centres": "labelled cells" if sampling.sparse else "anywhere",
        "null_patches": "filled and masked" if sampling.keep_nulls else "skipped",
        "resample": sampling.resample,
        "seed": sampling.seed,
        "origins": {
            part: [[int(f // width), int(f % width)] for f in flat]
            for part, flat in draw.origins.items()
        },
    }


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
