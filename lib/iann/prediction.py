"""Tiled classification of the current region with a model bundle.

The region is processed one row of tiles at a time: the rows of a tile row
plus a margin of half the receptive field above and below are read, each
tile is predicted with the same margin left and right, and only the tile's
core is kept. Inside the region every output cell thus sees its whole
receptive field, and the result does not depend on the tile size; at the
region's edges the network pads with zeros itself, as on a training patch.
Memory holds one tile row, whatever the size of the region.
"""

import numpy as np

import grass.script as gs

from .accuracy import PairCounter
from .grassio import CELL_NULL, RowReader, RowWriter, read_int_rows, read_rows
from .normalise import standardise


def predict_tile(model, tile):
    """Class probabilities (rows, cols, classes) of one standardised tile."""
    return np.asarray(model.predict_on_batch(tile[np.newaxis]))[0]


def classify_region(
    model,
    metadata,
    bands,
    output,
    tile_size=256,
    reference=None,
):
    """Write the classified map `output` (CELL, class values) on the region.

    Returns a PairCounter of (reference, map) values when `reference` is
    given. The output map is written row by row; on any error it is
    discarded, never left half-written.
    """
    region = gs.region()
    rows, cols = region["rows"], region["cols"]
    margin = int(metadata["margin"])
    mean = np.asarray(metadata["normalisation"]["mean"], dtype=np.float32)
    std = np.asarray(metadata["normalisation"]["std"], dtype=np.float32)
    values = np.array([c["value"] for c in metadata["classes"]], dtype=np.int32)
    counter = PairCounter() if reference else None

    readers = [RowReader(name) for name in bands]
    reference_reader = RowReader(reference) if reference else None
    writer = RowWriter(output, "CELL")
    tile_rows = list(range(0, rows, tile_size))
    cells_with_data = 0
    try:
        for done, row0 in enumerate(tile_rows):
            row1 = min(rows, row0 + tile_size)
            low, high = max(0, row0 - margin), min(rows, row1 + margin)
            block = read_rows(readers, low, high)
            nulls = np.isnan(block).any(axis=0)
            block = standardise(np.moveaxis(block, 0, -1), mean, std)
            classes = np.full((row1 - row0, cols), CELL_NULL, dtype=np.int32)
            for col0 in range(0, cols, tile_size):
                col1 = min(cols, col0 + tile_size)
                left, right = max(0, col0 - margin), min(cols, col1 + margin)
                core_nulls = nulls[row0 - low : row1 - low, col0:col1]
                if core_nulls.all():
                    continue
                probabilities = predict_tile(model, block[:, left:right])
                core = probabilities[row0 - low : row1 - low, col0 - left : col1 - left]
                classes[:, col0:col1] = np.where(
                    core_nulls, CELL_NULL, values[np.argmax(core, axis=-1)]
                )
                cells_with_data += int((~core_nulls).sum())
            for line in classes:
                writer.write(line)
            if counter is not None:
                counter.add(read_int_rows(reference_reader, row0, row1), classes)
            gs.percent(done + 1, len(tile_rows), 1)
    except BaseException:
        writer.discard()
        raise
    finally:
        for reader in readers + ([reference_reader] if reference_reader else []):
            reader.close()
    writer.close()
    return counter, cells_with_data


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
