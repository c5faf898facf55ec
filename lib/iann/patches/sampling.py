"""Where patches are cut: the sampling and splitting maths of i.ann.patches.

Pure NumPy on arrays of the region's grid (no GRASS session needed): the
class encoding, the windows a patch may start at, the spatial blocks of
the split and the draw of patch origins. Origins are flat indices of a
patch's top-left cell in the region (row * cols + col).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from iann.formats.dataset import UNLABELLED
from iann.grass import CELL_NULL

MAX_CLASSES = 254


def encode_labels(reference_cells, values):
    """Map class values to indices 0..K-1 (uint8); NULL cells become UNLABELLED."""
    labelled = reference_cells != CELL_NULL
    if int(values[-1]) - int(values[0]) < 1 << 20:
        lookup = np.full(int(values[-1]) - int(values[0]) + 1, UNLABELLED, np.uint8)
        lookup[values - values[0]] = np.arange(len(values))
        offsets = np.where(labelled, reference_cells - values[0], 0)
        return np.where(labelled, lookup[offsets], UNLABELLED).astype(np.uint8)
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


def labelled_cells_needed(min_labelled, size, sparse):
    """Labelled cells a patch needs: a count when sparse, else a percentage."""
    if sparse:
        return max(1, int(np.ceil(min_labelled)))
    return max(1, int(np.ceil(min_labelled / 100.0 * size * size)))


def usable_origins(band_nulls, labelled, size, need, keep_nulls, centred=False):
    """Boolean grid of top-left cells whose patch may be sampled.

    A patch needs `need` labelled cells and, unless `keep_nulls`, no NULL
    band cell. With `centred`, its centre cell must be labelled too: sparse
    references (points, a few polygons) give one candidate patch around
    each labelled cell, not every window that happens to touch one.
    """
    ok = window_sums(labelled, size) >= need
    if not keep_nulls:
        ok &= window_sums(band_nulls, size) == 0
    if centred:
        half = size // 2
        ok &= labelled[half : half + ok.shape[0], half : half + ok.shape[1]]
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


def label_patches(labels, flat, width, size, chunk=1024):
    """Label patches at the given origins, a chunk of patches at a time."""
    windows = sliding_window_view(labels, (size, size))
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk]
        yield windows[part // width, part % width]


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
