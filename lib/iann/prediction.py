"""Tiled classification of the current region with a model bundle.

The region is processed one row of tiles at a time: the rows of a tile row
plus a margin of half the receptive field above and below are read, each
tile is predicted with the same margin left and right, and only the tile's
core is kept. Inside the region every output cell thus sees its whole
receptive field, and the result does not depend on the tile size; at the
region's edges the network pads with zeros itself, as on a training patch.
Memory holds one tile row, whatever the number of rows of the region.
"""

import numpy as np

import grass.script as gs

from .accuracy import PairCounter
from .errors import IannError
from .grassio import CELL_NULL, RowReader, RowWriter, read_int_rows, read_rows
from .models import fcn_for_prediction
from .normalise import bundle_transform, standardise_bands

UNCERTAINTY_METHODS = ("entropy", "margin")


def dihedral(array, k):
    """One of the 8 flips and 90-degree rotations of (rows, cols, ...)."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def undo_dihedral(array, k):
    """The inverse of dihedral(array, k)."""
    out = array[:, ::-1] if k >= 4 else array
    return np.rot90(out, -(k % 4), axes=(0, 1))


def padded_to(tile, multiple):
    """The tile with zero rows and columns added to multiples of `multiple`.

    Zero is the band mean once standardised, as at the edges of training
    patches; networks with poolings (unet, resunet) need these sizes.
    """
    rows, cols = tile.shape[:2]
    extra = (-rows % multiple, -cols % multiple)
    if extra == (0, 0):
        return tile
    return np.pad(tile, ((0, extra[0]), (0, extra[1]), (0, 0)))


def predict_tile(model, tile, augment=False, multiple=1):
    """Class probabilities (rows, cols, classes) of one standardised tile.

    With `augment`, the mean over the 8 flips and rotations of the tile
    (test-time augmentation), each mapped back before averaging.
    """
    rows, cols = tile.shape[:2]
    if not augment:
        out = model.predict_on_batch(padded_to(tile, multiple)[np.newaxis])
        return np.asarray(out)[0, :rows, :cols]
    total = None
    for k in range(8):
        turned = np.ascontiguousarray(dihedral(tile, k))
        out = model.predict_on_batch(padded_to(turned, multiple)[np.newaxis])
        out = np.asarray(out)[0, : turned.shape[0], : turned.shape[1]]
        out = undo_dihedral(out, k)
        total = out if total is None else total + out
    return total / 8


def uncertainty_of(probabilities, method):
    """Per-cell uncertainty in 0..1: normalised entropy or 1 - top-2 margin."""
    if method == "entropy":
        p = np.clip(probabilities, 1e-12, 1.0)
        entropy = -(p * np.log(p)).sum(axis=-1)
        return entropy / np.log(probabilities.shape[-1])
    top = np.sort(probabilities, axis=-1)
    return 1.0 - (top[..., -1] - top[..., -2])


def tile_rows_for_memory(tile_size, margin, cols, n_bands, n_outputs, memory_mb):
    """Largest tile size <= tile_size whose tile-row buffers fit in memory_mb.

    A tile row holds (tile + 2 margin) rows of every band (float32,
    standardised in place) and tile rows of every output (4 bytes a cell).
    """
    budget = memory_mb * 2**20

    def needed(tile):
        return cols * 4 * ((tile + 2 * margin) * n_bands + tile * n_outputs)

    tile = tile_size
    while tile > 16 and needed(tile) > budget:
        tile //= 2
    return tile


def image_statistics(bands):
    """Mean and standard deviation of each band over the region (r.univar)."""
    means, stds = [], []
    for name in bands:
        stats = gs.parse_command("r.univar", map=name, flags="g")
        if int(stats.get("n", 0)) == 0:
            raise IannError(_("Raster map <{}> has no data in the region").format(name))
        means.append(float(stats["mean"]))
        stds.append(float(stats["stddev"]) or 1.0)
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


class OutputMaps:
    """The row writers of the class map and optional probability/uncertainty maps."""

    def __init__(self, classes, probabilities=None, uncertainty=None):
        self.writers = {"classes": RowWriter(classes, "CELL")}
        self.probabilities = probabilities or []
        for i, name in enumerate(self.probabilities):
            self.writers[i] = RowWriter(name, "FCELL")
        if uncertainty:
            self.writers["uncertainty"] = RowWriter(uncertainty, "FCELL")

    def write(self, classes, probabilities, uncertainty):
        for line in classes:
            self.writers["classes"].write(line)
        for i in range(len(self.probabilities)):
            for line in probabilities[..., i]:
                self.writers[i].write(line)
        if "uncertainty" in self.writers:
            for line in uncertainty:
                self.writers["uncertainty"].write(line)

    def close(self):
        for writer in self.writers.values():
            writer.close()

    def discard(self):
        for writer in self.writers.values():
            writer.discard()


def classify_region(
    model,
    metadata,
    bands,
    output,
    tile_size=256,
    reference=None,
    probabilities=None,
    uncertainty=None,
    uncertainty_method="entropy",
    augment=False,
    normalisation=None,
    memory_mb=None,
    segments=None,
):
    """Write the classified map `output` (CELL, class values) on the region.

    `probabilities` is a list of FCELL map names, one per class, and
    `uncertainty` an FCELL map name; `normalisation` (mean, std) replaces
    the bundle's; `segments` names a segment map whose sums of class
    probabilities are returned for an object-based map. Returns a dict with
    the PairCounter of (reference, map) values when `reference` is given,
    the number of cells with data, per-class mapped cell counts, the tile
    size used and the per-segment probability sums. All maps are written
    row by row; on any error they are discarded, never left half-written.
    """
    region = gs.region()
    rows, cols = region["rows"], region["cols"]
    model = fcn_for_prediction(model) or model
    margin = int(metadata["margin"])
    multiple = int(metadata.get("size_multiple", 1))
    mean, std = bundle_transform(metadata) if normalisation is None else normalisation
    values = np.array([c["value"] for c in metadata["classes"]], dtype=np.int32)
    n_classes = len(values)
    # The probabilities of a whole tile row are only kept for the outputs
    # that need them; the class map alone needs one tile's at a time.
    keep_probabilities = bool(probabilities or uncertainty or segments)
    if memory_mb:
        n_outputs = 1 + len(probabilities or []) + (1 if uncertainty else 0)
        n_outputs += n_classes if keep_probabilities else 0
        tile_size = tile_rows_for_memory(
            tile_size, margin, cols, len(bands), n_outputs, memory_mb
        )
    # Tiles on the grid of the network's poolings, as in a whole-region run.
    tile_size = max(multiple, tile_size // multiple * multiple)
    counter = PairCounter() if reference else None
    mapped = np.zeros(n_classes, dtype=np.int64)
    segment_sums = {} if segments else None

    readers = [RowReader(name) for name in bands]
    extra = [RowReader(name) for name in (reference, segments) if name]
    reference_reader = extra[0] if reference else None
    segment_reader = extra[-1] if segments else None
    outputs = OutputMaps(output, probabilities, uncertainty)
    tile_rows = list(range(0, rows, tile_size))
    cells_with_data = 0
    try:
        for done, row0 in enumerate(tile_rows):
            row1 = min(rows, row0 + tile_size)
            low, high = max(0, row0 - margin), min(rows, row1 + margin)
            block = read_rows(readers, low, high)
            nulls = np.isnan(block).any(axis=0)
            block = standardise_bands(block, mean, std)
            classes = np.full((row1 - row0, cols), CELL_NULL, dtype=np.int32)
            probs = None
            if keep_probabilities:
                probs = np.full((row1 - row0, cols, n_classes), np.nan, np.float32)
            for col0 in range(0, cols, tile_size):
                col1 = min(cols, col0 + tile_size)
                left, right = max(0, col0 - margin), min(cols, col1 + margin)
                core_nulls = nulls[row0 - low : row1 - low, col0:col1]
                if core_nulls.all():
                    continue
                tile = np.ascontiguousarray(np.moveaxis(block[:, :, left:right], 0, -1))
                tile_probs = predict_tile(model, tile, augment, multiple)
                core = tile_probs[row0 - low : row1 - low, col0 - left : col1 - left]
                core = np.where(core_nulls[..., None], np.nan, core)
                if probs is not None:
                    probs[:, col0:col1] = core
                best = np.argmax(np.nan_to_num(core, nan=0.0), axis=-1)
                classes[:, col0:col1] = np.where(core_nulls, CELL_NULL, values[best])
                cells_with_data += int((~core_nulls).sum())
                mapped += np.bincount(best[~core_nulls], minlength=n_classes)
            unc = uncertainty_of(probs, uncertainty_method) if uncertainty else None
            outputs.write(classes, probs, unc)
            if counter is not None:
                counter.add(read_int_rows(reference_reader, row0, row1), classes)
            if segment_sums is not None:
                add_segment_sums(
                    segment_sums, read_int_rows(segment_reader, row0, row1), probs
                )
            gs.percent(done + 1, len(tile_rows), 1)
    except BaseException:
        outputs.discard()
        raise
    finally:
        for reader in readers + extra:
            reader.close()
    outputs.close()
    return {
        "counter": counter,
        "cells": cells_with_data,
        "mapped_cells": mapped,
        "tile_size": tile_size,
        "segment_sums": segment_sums,
    }


def strips(rows, parts, margin, multiple=1):
    """Row strips of a region: (core start, core stop, read start, read stop).

    Each strip is classified on its own, reading `margin` rows beyond its
    core on both sides (within the region), so that the cores put together
    equal the classification of the whole region. Strips start on
    multiples of `multiple`, the grid of the network's poolings.
    """
    bounds = np.linspace(0, rows, parts + 1) / multiple
    bounds = np.minimum(bounds.round().astype(int) * multiple, rows)
    bounds[-1] = rows
    return [
        (int(a), int(b), max(0, int(a) - margin), min(rows, int(b) + margin))
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ]


def strip_region_env(region, read_start, read_stop):
    """GRASS_REGION for the rows [read_start, read_stop) of `region`."""
    return gs.region_env(
        n=region["n"] - read_start * region["nsres"],
        s=region["n"] - read_stop * region["nsres"],
        w=region["w"],
        e=region["e"],
        nsres=region["nsres"],
        ewres=region["ewres"],
    )


def merge_strips(output, strip_maps, cores, mtype="CELL"):
    """Put the cores of the strip maps together into `output` (r.mapcalc).

    The strip maps overlap by their margins; each row of the output is
    taken from the strip whose core holds it.
    """
    expression = strip_maps[-1]
    for name, (_start, stop, _low, _high) in zip(strip_maps[-2::-1], cores[-2::-1]):
        expression = "if(row() <= {}, {}, {})".format(stop, name, expression)
    cast = "int" if mtype == "CELL" else "float"
    gs.mapcalc(
        "{} = {}({})".format(output, cast, expression), overwrite=True, quiet=True
    )


def add_segment_sums(sums, segment_ids, probabilities):
    """Add each segment's summed class probabilities and cell count."""
    keep = (segment_ids != CELL_NULL) & ~np.isnan(probabilities[..., 0])
    if not keep.any():
        return
    ids = segment_ids[keep]
    unique, inverse = np.unique(ids, return_inverse=True)
    totals = np.zeros((len(unique), probabilities.shape[-1]), dtype=np.float64)
    np.add.at(totals, inverse, probabilities[keep])
    for segment, total in zip(unique.tolist(), totals):
        if segment in sums:
            sums[segment] += total
        else:
            sums[segment] = total


def write_segment_classes(output, segments, segment_sums, values, reference=None):
    """Object-based map: each segment gets its class of highest mean probability.

    Cells outside segments, or of segments without data, are NULL. Returns
    a PairCounter against `reference` when given.
    """
    ids = np.array(sorted(segment_sums), dtype=np.int64)
    best = np.array([values[np.argmax(segment_sums[i])] for i in ids], np.int32)
    region = gs.region()
    reader = RowReader(segments)
    reference_reader = RowReader(reference) if reference else None
    counter = PairCounter() if reference else None
    writer = RowWriter(output, "CELL")
    try:
        for row in range(region["rows"]):
            line = read_int_rows(reader, row, row + 1)[0]
            position = np.searchsorted(ids, line)
            position = np.clip(position, 0, max(len(ids) - 1, 0))
            found = (
                (line != CELL_NULL) & (ids[position] == line)
                if len(ids)
                else (np.zeros(line.shape, bool))
            )
            classes = np.where(found, best[position] if len(ids) else 0, CELL_NULL)
            writer.write(classes)
            if counter is not None:
                counter.add(read_int_rows(reference_reader, row, row + 1)[0], classes)
    except BaseException:
        writer.discard()
        raise
    finally:
        reader.close()
        if reference_reader:
            reference_reader.close()
    writer.close()
    return counter


def write_class_metadata(output, metadata, title, history):
    """Categories, colours, title and history of a classified map."""
    categories = "\n".join(
        "{}|{}".format(c["value"], c["label"]) for c in metadata["classes"]
    )
    gs.write_command(
        "r.category",
        map=output,
        rules="-",
        separator="pipe",
        stdin=categories,
        quiet=True,
    )
    colors = [c for c in metadata["classes"] if c.get("color")]
    if colors:
        rules = "\n".join("{} {}".format(c["value"], c["color"]) for c in colors)
        gs.write_command("r.colors", map=output, rules="-", stdin=rules, quiet=True)
    gs.run_command("r.support", map=output, title=title, history=history, quiet=True)
