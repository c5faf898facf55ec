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
from concurrent.futures import ThreadPoolExecutor
import os
import platform

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import grass.script as gs

from . import FORMAT_VERSION, DATASET_FORMAT, __version__
from .errors import IannError
from .folders import atomic_folder
from .grassio import (
    CELL_NULL,
    RowReader,
    RowWriter,
    raster_info,
    read_categories,
    read_colors,
    read_int_rows,
    read_rows,
    require_integer_map,
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


def start_resampling(bands, method, temporary_maps):
    """Start interpolating bands coarser than the region, in the background.

    A band whose cells are larger than the region's is interpolated with
    `method` (nearest, bilinear, bicubic) by r.resamp.interp into a
    temporary map, whose name is appended to `temporary_maps` for the caller
    to remove. Other bands are read as they are (GRASS reads them on the
    region's grid, taking the nearest cell). Returns, per band, a record of
    what is done and its r.info, and the running processes by band index.
    """
    region = gs.region()
    records, infos, running = [], [], {}
    for i, name in enumerate(bands):
        info = raster_info(name)
        native = [float(info["nsres"]), float(info["ewres"])]
        coarser = native[0] > region["nsres"] * 1.001 or (
            native[1] > region["ewres"] * 1.001
        )
        records.append(
            {
                "index": i,
                "name": name,
                "datatype": info["datatype"],
                "resolution": native,
                "resampled": method if coarser and method != "nearest" else None,
            }
        )
        infos.append(info)
        if records[-1]["resampled"]:
            temporary = gs.append_node_pid("iann_resampled_{}".format(i))
            temporary_maps.append(temporary)
            gs.verbose(
                _("Resampling <{}> ({} m) to the region ({} m) by {}").format(
                    name, native[0], region["nsres"], method
                )
            )
            running[i] = (
                temporary,
                gs.start_command(
                    "r.resamp.interp",
                    input=name,
                    output=temporary,
                    method=method,
                    quiet=True,
                    overwrite=True,
                ),
            )
    return records, infos, running


def finish_resampling(bands, index, running):
    """Wait for a band's interpolation; the name of the map to read."""
    if index not in running:
        return bands[index]
    name, process = running[index]
    if process.wait() != 0:
        raise IannError(
            _("Resampling of <{}> with r.resamp.interp failed").format(bands[index])
        )
    return name


def resampled_bands(bands, method, temporary_maps):
    """The maps to read for `bands` on the region's grid (see start_resampling)."""
    records, _infos, running = start_resampling(bands, method, temporary_maps)
    return [finish_resampling(bands, i, running) for i in range(len(bands))], records


def read_bands(bands, method, temporary_maps):
    """Bands on the region's grid as (bands, rows, cols) float32, NaN = NULL.

    Bands coarser than the region are interpolated (see start_resampling)
    in the background while the others are read. Returns the stack and the
    per-band records and r.info.
    """
    region = gs.region()
    records, infos, running = start_resampling(bands, method, temporary_maps)
    stack = np.empty((len(bands), region["rows"], region["cols"]), dtype=np.float32)
    order = [i for i in range(len(bands)) if i not in running] + list(running)
    for i in order:
        reader = RowReader(finish_resampling(bands, i, running))
        try:
            stack[i] = read_rows([reader], 0, region["rows"])[0]
        finally:
            reader.close()
    return stack, records, infos


def read_band_stack(maps):
    """Read bands on the current region: (bands, rows, cols) float32, NaN = NULL."""
    readers = [RowReader(name) for name in maps]
    try:
        rows = gs.region()["rows"]
        return read_rows(readers, 0, rows)
    finally:
        for reader in readers:
            reader.close()


def read_reference(name):
    """Read an integer reference map: int32 with CELL_NULL for NULL."""
    require_integer_map(name)
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
    if int(values[-1]) - int(values[0]) < 1 << 20:
        lookup = np.full(int(values[-1]) - int(values[0]) + 1, UNLABELLED, np.uint8)
        lookup[values - values[0]] = np.arange(len(values))
        labelled = reference_cells != CELL_NULL
        offsets = np.where(labelled, reference_cells - values[0], 0)
        return np.where(labelled, lookup[offsets], UNLABELLED).astype(np.uint8)
    labelled = reference_cells != CELL_NULL
    indices = np.clip(np.searchsorted(values, reference_cells), 0, len(values) - 1)
    return np.where(labelled, indices, UNLABELLED).astype(np.uint8)


def window_sums(cells, size):
    """Sum of `cells` over every size x size window, indexed by its top-left cell."""
    # int32 holds any count of cells of a region up to 2**31 cells.
    dtype = np.int32 if cells.size < 2**31 else np.int64
    integral = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1), dtype=dtype)
    np.cumsum(np.cumsum(cells, axis=0, dtype=dtype), axis=1, out=integral[1:, 1:])
    return (
        integral[size:, size:]
        - integral[:-size, size:]
        - integral[size:, :-size]
        + integral[:-size, :-size]
    )


def usable_origins(band_nulls, labelled, size, min_labelled, keep_nulls):
    """Boolean grid of top-left cells whose patch may be sampled.

    A patch needs `min_labelled` percent labelled cells (at least one) and,
    unless `keep_nulls`, no NULL band cell.
    """
    need = max(1, int(np.ceil(min_labelled / 100.0 * size * size)))
    ok = window_sums(labelled, size) >= need
    if not keep_nulls:
        ok &= window_sums(band_nulls, size) == 0
    return ok


def validation_blocks(shape, block_cells, fraction, rng):
    """Cells of the validation blocks: whole blocks drawn at random.

    Blocks of block_cells (rows, cols) start at the region's north-west
    corner; round(fraction x blocks) of them, at least one when fraction
    > 0, are validation blocks. Returns the cell mask and the block ids.
    """
    block_rows = -(-shape[0] // block_cells[0])
    block_cols = -(-shape[1] // block_cells[1])
    n_blocks = block_rows * block_cols
    n_validation = int(round(fraction * n_blocks))
    if fraction > 0:
        n_validation = min(max(1, n_validation), n_blocks - 1)
    chosen = np.zeros(n_blocks, dtype=bool)
    chosen[rng.choice(n_blocks, size=n_validation, replace=False)] = True
    grid = chosen.reshape(block_rows, block_cols)
    cells = np.repeat(np.repeat(grid, block_cells[0], 0), block_cells[1], 1)
    return cells[: shape[0], : shape[1]], np.flatnonzero(chosen)


def draw_origins(candidates, number, method, rng, size, stride, centre_classes):
    """Flat indices of `number` origins among the True cells of `candidates`.

    random: uniform without replacement; grid: the candidates on a grid of
    `stride` cells (a random subset if there are more than asked);
    balanced: stratified by the class of the patch's centre cell, each class
    getting an equal share as far as its candidates allow.
    """
    width = candidates.shape[1]
    if method == "grid":
        grid = np.zeros_like(candidates)
        grid[::stride, ::stride] = True
        candidates = candidates & grid
    flat = np.flatnonzero(candidates)
    if number >= len(flat):
        return rng.permutation(flat)
    if method != "balanced":
        return rng.choice(flat, size=number, replace=False)
    half = size // 2
    centre = centre_classes[flat // width + half, flat % width + half]
    strata = [flat[centre == c] for c in np.unique(centre) if c != UNLABELLED]
    quota = np.zeros(len(strata), dtype=int)
    left = number
    # Water filling: equal shares, the surplus of small classes to the others.
    while left > 0:
        room = np.array([len(s) for s in strata]) - quota
        open_ = np.flatnonzero(room > 0)
        if len(open_) == 0:
            break
        share = max(1, left // len(open_))
        for i in open_:
            take = min(share, room[i], left)
            quota[i] += take
            left -= take
            if left == 0:
                break
    chosen = [rng.choice(s, size=q, replace=False) for s, q in zip(strata, quota)]
    return rng.permutation(np.concatenate(chosen))


def create_patches(
    bands,
    reference,
    size,
    number,
    validation,
    seed,
    min_labelled=50.0,
    sampling="random",
    stride=None,
    split="blocks",
    block_size=None,
    resample="bilinear",
    keep_nulls=False,
    temporary_maps=None,
):
    """Plan a patch dataset on the current region.

    Returns a dict with the band stack, the encoded labels, the patch
    origins of each part and the dataset metadata; write_dataset() writes
    it. Nothing is written to disk here.
    """
    if stride is not None and stride < 1:
        raise IannError(_("stride must be at least 1 cell, not {}").format(stride))
    bands = require_rasters(bands)
    (reference,) = require_rasters([reference])
    region = gs.region()
    if size > region["rows"] or size > region["cols"]:
        raise IannError(
            _("Patch size {} is larger than the region ({} rows x {} cols)").format(
                size, region["rows"], region["cols"]
            )
        )
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
    temporary_maps = [] if temporary_maps is None else temporary_maps
    gs.verbose(_("Reading {} bands").format(len(bands)))
    stack, band_records, band_infos = read_bands(bands, resample, temporary_maps)
    band_nulls = np.isnan(stack).any(axis=0)
    labels = encode_labels(ref_cells, values)
    del ref_cells
    statistics = band_statistics(stack, labelled)
    if keep_nulls:
        # NULL band cells: filled with the band mean (0 once standardised)
        # and unlabelled, so that the loss never sees them.
        for band, mean in enumerate(statistics["mean"]):
            np.nan_to_num(stack[band], copy=False, nan=mean)
        labels[band_nulls] = UNLABELLED
        labelled &= ~band_nulls

    rng = np.random.default_rng(seed)
    usable = usable_origins(band_nulls, labelled, size, min_labelled, keep_nulls)
    del band_nulls
    n_validation = int(round(number * validation))
    wanted = {"train": number - n_validation, "validation": n_validation}
    block_ids = None
    if split == "blocks":
        block_metres = block_size or 4 * size * region["nsres"]
        block_cells = (
            max(1, int(round(block_metres / region["nsres"]))),
            max(1, int(round(block_metres / region["ewres"]))),
        )
        in_validation, block_ids = validation_blocks(
            labels.shape, block_cells, validation, rng
        )
        share = window_sums(in_validation, size)
        candidates = {
            "train": usable & (share == 0),
            "validation": usable & (share == size * size),
        }
    else:
        in_validation = None
        candidates = {"all": usable}
    stride = stride or size
    if split == "blocks":
        origins = {
            part: draw_origins(
                candidates[part], wanted[part], sampling, rng, size, stride, labels
            )
            for part in ("train", "validation")
        }
    else:
        drawn = draw_origins(
            candidates["all"], number, sampling, rng, size, stride, labels
        )
        n_val = int(round(len(drawn) * validation))
        origins = {"validation": drawn[:n_val], "train": drawn[n_val:]}
    # Sorted, so that patches are cut in reading order (faster); training
    # shuffles them anyway.
    origins = {part: np.sort(flat) for part, flat in origins.items()}
    width = usable.shape[1]
    obtained = sum(len(o) for o in origins.values())
    if obtained == 0:
        raise IannError(
            _(
                "No patch of {size} x {size} cells without NULL band cells and "
                "with {pct}% labelled cells fits in the region"
            ).format(size=size, pct=min_labelled)
        )
    if obtained < number:
        gs.warning(
            _("Only {} patches could be sampled, {} were asked for").format(
                obtained, number
            )
        )
    counts = {}
    for part, flat in origins.items():
        per_class = np.zeros(UNLABELLED + 1, dtype=np.int64)
        for chunk in label_patches(labels, flat, width, size):
            per_class += np.bincount(chunk.ravel(), minlength=UNLABELLED + 1)
        counts[part] = {
            "patches": int(len(flat)),
            "requested": int(wanted[part]) if split == "blocks" else None,
            "pixels_per_class": per_class[: len(values)].tolist(),
            "unlabelled_pixels": int(per_class[UNLABELLED]),
        }

    dtype = image_dtype(band_infos, resampled=any(r["resampled"] for r in band_records))
    metadata = {
        "format": DATASET_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "bands": band_records,
        "reference": reference,
        "classes": class_table(reference, values),
        "unlabelled": UNLABELLED,
        "patch_size": size,
        "image_dtype": np.dtype(dtype).name,
        "statistics": statistics,
        "statistics_area": "labelled reference cells with data in the band",
        "sampling": {
            "method": sampling,
            "stride": stride if sampling == "grid" else None,
            "split": split,
            "block_size": block_metres if split == "blocks" else None,
            "block_cells": list(block_cells) if split == "blocks" else None,
            "validation_blocks": block_ids.tolist() if block_ids is not None else None,
            "number_requested": number,
            "number_obtained": obtained,
            "validation_fraction": validation,
            "min_labelled_percent": min_labelled,
            "null_patches": "filled and masked" if keep_nulls else "skipped",
            "resample": resample,
            "seed": seed,
            "origins": {
                part: [[int(f // width), int(f % width)] for f in flat]
                for part, flat in origins.items()
            },
        },
        "counts": counts,
        "region": {k: region[k] for k in region},
        "mask": bool(gs.find_file("MASK", element="cell", mapset=".")["fullname"]),
        "projection": gs.read_command("g.proj", flags="wf").strip(),
        "software": software_versions(),
        "files": ARRAYS,
    }
    return {
        "stack": stack,
        "labels": labels,
        "origins": origins,
        "width": width,
        "dtype": dtype,
        "validation_cells": in_validation,
        "metadata": metadata,
    }


def label_patches(labels, flat, width, size, chunk=1024):
    """Label patches at the given origins, a chunk of patches at a time."""
    windows = sliding_window_view(labels, (size, size))
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk]
        yield windows[part // width, part % width]


def band_statistics(stack, labelled):
    """Per-band statistics over labelled cells with data, for normalisation."""
    stats = {key: [] for key in ("mean", "std", "min", "max", "p2", "p98")}
    for band in range(stack.shape[0]):
        values = stack[band][labelled]
        values = values[~np.isnan(values)]
        if values.size == 0:
            raise IannError(_("Band {} has no data in the labelled area").format(band))
        # Percentiles from at most ~4 million evenly spaced cells: exact to
        # well below the bands' precision, at a fraction of the cost.
        p2, p98 = np.percentile(values[:: max(1, values.size // 4_000_000)], [2, 98])
        stats["mean"].append(float(values.mean(dtype=np.float64)))
        stats["std"].append(float(values.std(dtype=np.float64)) or 1.0)
        stats["min"].append(float(values.min()))
        stats["max"].append(float(values.max()))
        stats["p2"].append(float(p2))
        stats["p98"].append(float(p98))
    return stats


def image_dtype(band_infos, resampled=False):
    """uint16 when every band is an integer map within 0..65535, else float32."""
    if resampled:
        return np.float32
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


def summary(metadata):
    """Patch and cell counts per class and split, as text (the -p output)."""
    lines = []
    counts = metadata["counts"]
    parts = [p for p in ("train", "validation") if p in counts]
    lines.append(
        "Patches: {} of {} x {} cells ({} asked for)".format(
            " + ".join("{} {}".format(counts[p]["patches"], p) for p in parts),
            metadata["patch_size"],
            metadata["patch_size"],
            metadata["sampling"]["number_requested"],
        )
    )
    width = max(len(c["label"]) for c in metadata["classes"])
    lines.append(
        "{:>6}  {:<{w}}  ".format("value", "class", w=width)
        + "  ".join("{:>12}".format(p + " cells") for p in parts)
    )
    for i, c in enumerate(metadata["classes"]):
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


def write_npy_chunks(path, dtype, shape, chunks):
    """Write an .npy file from an iterable of arrays, appended in order.

    Sequential writes of cache-sized chunks (on the test machine 2 to 3
    times faster than filling a memory-mapped .npy, with the same bounded
    memory), each written by a thread while the next chunk is cut. The
    iterable may reuse a buffer every other chunk, not more often.
    """
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    written = 0
    with open(path, "wb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        np.lib.format.write_array_header_1_0(f, header)
        pending = None
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            if pending is not None:
                pending.result()
            pending = pool.submit(f.write, memoryview(chunk).cast("B"))
            written += len(chunk)
        if pending is not None:
            pending.result()
    if written != shape[0]:
        raise IannError(_("Internal error writing <{}>").format(path))


def image_patches(stack, flat, width, size, dtype, chunk=64):
    """Image patches (n, size, size, bands) at the given origins, in chunks.

    Two buffers take turns, so that one can be written while the other is
    filled.
    """
    buffers = [
        np.empty((chunk, size, size, stack.shape[0]), dtype=np.float32)
        for _ in range(2)
    ]
    for number, start in enumerate(range(0, len(flat), chunk)):
        buffer = buffers[number % 2]
        part = flat[start : start + chunk]
        for i, (row, col) in enumerate(zip(part // width, part % width)):
            buffer[i] = np.moveaxis(stack[:, row : row + size, col : col + size], 0, -1)
        patches = buffer[: len(part)]
        yield patches if dtype == np.float32 else np.rint(patches)


def write_dataset(folder, plan, overwrite=False):
    """Write the planned patches into a new dataset folder.

    Patches are cut from the band stack and written a chunk at a time, so
    the dataset is never held in memory.
    """
    size = plan["metadata"]["patch_size"]
    stack = plan["stack"]
    width = plan["width"]
    with atomic_folder(folder, overwrite) as tmp:
        for part, flat in plan["origins"].items():
            write_npy_chunks(
                os.path.join(tmp, ARRAYS[part + "_images"]),
                plan["dtype"],
                (len(flat), size, size, stack.shape[0]),
                image_patches(stack, flat, width, size, plan["dtype"]),
            )
            write_npy_chunks(
                os.path.join(tmp, ARRAYS[part + "_labels"]),
                np.uint8,
                (len(flat), size, size),
                label_patches(plan["labels"], flat, width, size),
            )
        with open(os.path.join(tmp, METADATA), "w") as f:
            json.dump(plan["metadata"], f, indent=1)


def write_validation_map(name, validation_cells):
    """Raster map of the split: 1 in validation blocks, 0 in training blocks."""
    writer = RowWriter(name, "CELL")
    try:
        for row in validation_cells:
            writer.write(row.astype(np.int32))
    except BaseException:
        writer.discard()
        raise
    writer.close()
    gs.write_command(
        "r.category",
        map=name,
        rules="-",
        separator="pipe",
        stdin="0|training\n1|validation",
        quiet=True,
    )
    gs.write_command(
        "r.colors", map=name, rules="-", stdin="0 200:200:200\n1 255:140:0", quiet=True
    )


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
