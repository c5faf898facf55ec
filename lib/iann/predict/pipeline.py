"""The tile pipeline: one block classified from a source into a sink.

The block is processed one tile row at a time: the rows of a tile row plus
the margin above and below are read, each tile is predicted with the same
margin left and right, and only the tile's core is kept. Every output cell
thus sees its whole receptive field, and the result does not depend on the
tile or block size; at the region's edges the network pads with zeros
itself, as on a training patch.

Reading the next tile row and writing the last one happen in an I/O
thread while the network works on the current one; tiles of the same
shape can go to the network several at a time (`batch`). Everything is
channels first, as bands are read: a tile is (bands, rows, cols), the
network's output (classes, rows, cols), so that a tile is a plain copy
of the rows read and each class's probabilities a plane to write. A
source and a sink are anything with `read(window)` and `write(window,
classes, probabilities, uncertainty)`: GRASS maps (jobs/block.py) or arrays
in memory (below), through the same code.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from iann.grass import CELL_NULL
from iann.nn.augmentation import dihedral, undo_dihedral
from iann.nn.normalise import standardise_bands
from iann.predict.decision import decide
from iann.predict.tiling import tile_row_windows, tile_windows

UNCERTAINTY_METHODS = ("entropy", "margin")


@dataclass(frozen=True)
class PredictionSettings:
    """How tiles become outputs; the same for every block of a job."""

    mean: np.ndarray
    std: np.ndarray
    values: tuple
    margin: int
    multiple: int = 1
    augment: bool = False
    probabilities: bool = False
    uncertainty: str = None
    batch: int = 1
    input_size: int = None  # a network that takes tiles of this side only
    # The decision rule's factor per class (predict/decision.py); None: argmax.
    class_scale: tuple = None


@dataclass
class BlockStats:
    """What classifying a block did, for messages and benchmarks."""

    cells: int = 0
    tiles: int = 0
    network_seconds: float = 0.0
    seconds: float = 0.0
    mapped: np.ndarray = field(default=None, repr=False)


def padded_to(tile, multiple, size=None):
    """The (bands, rows, cols) tile with zeros added to multiples of `multiple`,
    or to `size` x `size` cells for a network of fixed input size.

    Zero is the band mean once standardised, as at the edges of training
    patches; networks with poolings (unet, resunet) need these sizes.
    """
    rows, cols = tile.shape[1:]
    if size:
        extra = (size - rows, size - cols)
    else:
        extra = (-rows % multiple, -cols % multiple)
    if extra == (0, 0):
        return tile
    return np.pad(tile, ((0, 0), (0, extra[0]), (0, extra[1])))


def predict_tiles(engine, tiles, augment=False, multiple=1, batch=1, size=None):
    """Class probabilities (classes, rows, cols) of standardised tiles.

    With `augment`, the mean over the 8 flips and rotations of each tile
    (test-time augmentation), each mapped back before averaging, summed in
    the order of the transforms. Consecutive views of the same padded
    shape go to the engine together, up to `batch` at a time.
    """
    views = [(i, k) for i in range(len(tiles)) for k in (range(8) if augment else (0,))]
    sums = [None] * len(tiles)
    pending = []

    def flush():
        stacked = (
            pending[0][2][np.newaxis]
            if len(pending) == 1
            else np.stack([view for _i, _k, view, _shape in pending])
        )
        out = engine.predict(stacked)
        for (i, k, _view, (rows, cols)), probabilities in zip(pending, out):
            if augment:
                probabilities = undo_dihedral(probabilities, k, axes=(1, 2))
            probabilities = probabilities[:, :rows, :cols]
            sums[i] = probabilities if sums[i] is None else sums[i] + probabilities
        pending.clear()

    for i, k in views:
        # Padded before turning: the poolings of every view then group the
        # cells on the region's grid, as in a tile of any other size.
        padded = padded_to(tiles[i], multiple, size)
        view = (
            np.ascontiguousarray(dihedral(padded, k, axes=(1, 2)))
            if augment
            else padded
        )
        if pending and (view.shape != pending[0][2].shape or len(pending) == batch):
            flush()
        pending.append((i, k, view, tiles[i].shape[1:]))
    if pending:
        flush()
    return [s / 8 if augment else s for s in sums]


def predict_tile_classes(engine, tiles, multiple=1, batch=1, size=None):
    """Class indices (rows, cols) of standardised tiles, from the engine.

    Consecutive tiles of the same padded shape go to the engine together,
    up to `batch` at a time.
    """
    out, pending = [], []

    def flush():
        stacked = np.stack([padded for padded, _shape in pending])
        classes = engine.predict_classes(stacked)
        for indices, (_padded, (rows, cols)) in zip(classes, pending):
            out.append(indices[:rows, :cols])
        pending.clear()

    for tile in tiles:
        padded = padded_to(tile, multiple, size)
        if pending and (padded.shape != pending[0][0].shape or len(pending) == batch):
            flush()
        pending.append((padded, tile.shape[1:]))
    if pending:
        flush()
    return out


def uncertainty_of(probabilities, method):
    """Per-cell uncertainty in 0..1 of (classes, rows, cols) probabilities:
    normalised entropy or 1 - top-2 margin."""
    if method == "entropy":
        p = np.clip(probabilities, 1e-12, 1.0)
        entropy = -(p * np.log(p)).sum(axis=0)
        return entropy / np.log(probabilities.shape[0])
    top = np.sort(probabilities, axis=0)
    return 1.0 - (top[-1] - top[-2])


def read_standardised(source, window, settings):
    """A tile row of the source, standardised in place, and its NULL cells."""
    block = source.read(window)
    nulls = np.isnan(block).any(axis=0)
    return standardise_bands(block, settings.mean, settings.std), nulls


def predict_tile_row(engine, settings, data, nulls, written, read, tile_size, stats):
    """Classes (and probabilities, uncertainty) of the cells of one tile row.

    `data` is the (bands, rows, cols) tile row read, `nulls` its NULL
    cells; returns the classes (rows, cols), the probabilities (classes,
    rows, cols) or None, and the uncertainty (rows, cols) or None.
    """
    values = np.asarray(settings.values, dtype=np.int32)
    keep = settings.probabilities or settings.uncertainty
    classes = np.full((written.rows, written.cols), CELL_NULL, dtype=np.int32)
    probabilities = None
    if keep:
        probabilities = np.full(
            (len(values), written.rows, written.cols), np.nan, np.float32
        )
    r0, r1 = written.row0 - read.row0, written.row1 - read.row0
    # Tiles go to the network a group at a time (`batch` views) and only
    # their cores are kept: a row of tiles' inputs and probabilities are
    # never all held at once (for fcn-64 on 1074-cell tiles, 55 MB a tile).
    views_per_tile = 8 if settings.augment else 1
    group_size = max(1, -(-settings.batch // views_per_tile))
    group = []

    # The class map alone: the engine gives each cell's class index itself.
    classes_only = (
        not keep and not settings.augment and hasattr(engine, "predict_classes")
    )

    def predict_group():
        started = time.perf_counter()
        tiles = [array for *_where, array in group]
        if classes_only:
            predicted = predict_tile_classes(
                engine, tiles, settings.multiple, settings.batch, settings.input_size
            )
        else:
            predicted = predict_tiles(
                engine,
                tiles,
                settings.augment,
                settings.multiple,
                settings.batch,
                settings.input_size,
            )
        stats.network_seconds += time.perf_counter() - started
        for (core, window, core_nulls, _array), tile_output in zip(group, predicted):
            keep_core(core, window, core_nulls, tile_output)
        group.clear()

    def keep_core(core, window, core_nulls, tile_output):
        """The core of a tile: its probabilities, or its class indices."""
        c0, c1 = core.col0 - window.col0, core.col1 - window.col0
        a, b = core.col0 - written.col0, core.col1 - written.col0
        with_nulls = core_nulls.any()
        if classes_only:
            best = tile_output[r0:r1, c0:c1]
        else:
            kept = tile_output[:, r0:r1, c0:c1]
            # The network's output has no NaN (NULL inputs are the band
            # mean): NULL cells are set once the classes are taken.
            best = decide(kept, settings.class_scale)
            if probabilities is not None:
                probabilities[:, :, a:b] = kept
                if with_nulls:
                    probabilities[:, :, a:b][:, core_nulls] = np.nan
        counts = np.bincount(best.ravel(), minlength=len(values))
        if with_nulls:
            counts -= np.bincount(best[core_nulls], minlength=len(values))
        core_classes = values[best]
        if with_nulls:
            core_classes[core_nulls] = CELL_NULL
        classes[:, a:b] = core_classes
        stats.cells += core_nulls.size - int(np.count_nonzero(core_nulls))
        stats.mapped += counts
        stats.tiles += 1

    for core, window in tile_windows(written, tile_size, settings.margin, read):
        core_nulls = nulls[r0:r1, core.col0 - read.col0 : core.col1 - read.col0]
        if core_nulls.all():
            continue
        c0, c1 = window.col0 - read.col0, window.col1 - read.col0
        array = np.ascontiguousarray(data[:, :, c0:c1])
        group.append((core, window, core_nulls, array))
        if len(group) == group_size:
            predict_group()
    if group:
        predict_group()
    uncertainty = None
    if settings.uncertainty:
        uncertainty = uncertainty_of(probabilities, settings.uncertainty)
    return classes, probabilities if settings.probabilities else None, uncertainty


def classify_block(engine, settings, source, sink, block, tile_size, progress=None):
    """Classify `block` (tiling.Block) from `source` into `sink`.

    `progress(done, total)` is called after each tile row. Returns the
    block's BlockStats.
    """
    started = time.perf_counter()
    stats = BlockStats(mapped=np.zeros(len(settings.values), dtype=np.int64))
    rows = tile_row_windows(block.core, tile_size, settings.margin, block.read)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="i.ann-io") as io:
        reading = io.submit(read_standardised, source, rows[0][1], settings)
        writing = None
        for done, (written, read) in enumerate(rows):
            data, nulls = reading.result()
            if done + 1 < len(rows):
                reading = io.submit(
                    read_standardised, source, rows[done + 1][1], settings
                )
            outputs = predict_tile_row(
                engine, settings, data, nulls, written, read, tile_size, stats
            )
            del data
            if writing is not None:
                writing.result()
            writing = io.submit(sink.write, written, *outputs)
            if progress is not None:
                progress(done + 1, len(rows))
        writing.result()
    stats.seconds = time.perf_counter() - started
    return stats


class ArraySource:
    """Bands of a region held in memory: (bands, rows, cols), NaN for NULL."""

    def __init__(self, bands):
        self.bands = bands

    def read(self, window):
        return np.array(
            self.bands[:, window.row0 : window.row1, window.col0 : window.col1],
            dtype=np.float32,
        )


class ArraySink:
    """Outputs of a region held in memory (CELL_NULL / NaN for NULL);
    probabilities (rows, cols, classes)."""

    def __init__(self, rows, cols, n_classes, probabilities=False, uncertainty=False):
        self.classes = np.full((rows, cols), CELL_NULL, dtype=np.int32)
        self.probabilities = None
        if probabilities:
            self.probabilities = np.full((rows, cols, n_classes), np.nan, np.float32)
        self.uncertainty = None
        if uncertainty:
            self.uncertainty = np.full((rows, cols), np.nan, np.float32)

    def write(self, window, classes, probabilities, uncertainty):
        rows = slice(window.row0, window.row1)
        cols = slice(window.col0, window.col1)
        self.classes[rows, cols] = classes
        if self.probabilities is not None:
            self.probabilities[rows, cols] = np.moveaxis(probabilities, 0, -1)
        if self.uncertainty is not None:
            self.uncertainty[rows, cols] = uncertainty
