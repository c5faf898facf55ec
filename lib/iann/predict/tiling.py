"""Where a region is cut: the blocks of a job and the tiles of a block.

Pure arithmetic on cell indices (no GRASS, no Keras), so that it can be
checked on its own. Rows and columns count from the region's north-west
corner; windows are half-open, [row0, row1) x [col0, col1).

A block is the unit of work of a classification job: a process classifies
it reading its neighbours' cells within the margin (half the network's
receptive field), so that the blocks put together equal the
classification of the whole region cell for cell. Block and tile origins
stay on multiples of the network's size multiple (its pooling grid).

Blocks are as wide as a process's memory allows (widest_block), up to the
whole region: GRASS stores a raster map row by row, compressed, and reads
a whole row to give any part of it, so a block narrower than the region
pays for reading every row of the region's width.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Cells [row0, row1) x [col0, col1) of the region."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def rows(self):
        return self.row1 - self.row0

    @property
    def cols(self):
        return self.col1 - self.col0

    @property
    def cells(self):
        return self.rows * self.cols


@dataclass(frozen=True)
class Block:
    """One unit of work: the cells it writes and the cells it reads."""

    index: int
    core: Window
    read: Window


def round_up(value, multiple):
    return -(-value // multiple) * multiple


def block_size_for(requested, multiple, margin):
    """Block size on the pooling grid and not smaller than the margin."""
    size = round_up(max(requested, margin, 1), multiple)
    return size


def with_margin(core, margin, rows, cols):
    """The window read for `core`: the margin around it, within the region."""
    return Window(
        max(0, core.row0 - margin),
        min(rows, core.row1 + margin),
        max(0, core.col0 - margin),
        min(cols, core.col1 + margin),
    )


def block_grid(rows, cols, block_size, margin, block_cols=None):
    """The blocks of a rows x cols region, row by row from the north-west.

    Blocks of `block_size` rows and `block_cols` columns (by default as
    many as rows).
    """
    block_cols = block_cols or block_size
    blocks = []
    for row0 in range(0, rows, block_size):
        for col0 in range(0, cols, block_cols):
            core = Window(
                row0, min(rows, row0 + block_size), col0, min(cols, col0 + block_cols)
            )
            blocks.append(
                Block(len(blocks), core, with_margin(core, margin, rows, cols))
            )
    return blocks


def tile_row_windows(core, tile_size, margin, read):
    """The tile rows of a block: (rows written, rows read) windows.

    A tile row spans the block's columns and is read with the margin above
    and below (within the block's read window, i.e. the region).
    """
    rows = []
    for row0 in range(core.row0, core.row1, tile_size):
        row1 = min(core.row1, row0 + tile_size)
        written = Window(row0, row1, core.col0, core.col1)
        rows.append(
            (
                written,
                Window(
                    max(read.row0, row0 - margin),
                    min(read.row1, row1 + margin),
                    read.col0,
                    read.col1,
                ),
            )
        )
    return rows


def tile_windows(written, tile_size, margin, read):
    """The tiles of a tile row: (cells written, cells read) windows."""
    tiles = []
    for col0 in range(written.col0, written.col1, tile_size):
        col1 = min(written.col1, col0 + tile_size)
        tiles.append(
            (
                Window(written.row0, written.row1, col0, col1),
                Window(
                    read.row0,
                    read.row1,
                    max(read.col0, col0 - margin),
                    min(read.col1, col1 + margin),
                ),
            )
        )
    return tiles


def tile_row_bytes(tile, margin, cols, n_bands, n_outputs):
    """Bytes of a block's tile-row buffers (see tile_size_for_memory)."""
    return 2 * cols * 4 * ((tile + 2 * margin) * n_bands + tile * n_outputs)


def widest_block(tile, margin, n_bands, n_outputs, memory_mb, multiple=1):
    """The most columns a block may have for its tile rows to fit in memory_mb.

    A multiple of `multiple`; 0 when not even the margins fit.
    """
    per_column = tile_row_bytes(tile, margin, 1, n_bands, n_outputs)
    columns = memory_mb * 2**20 // per_column - 2 * margin
    return max(0, columns // multiple * multiple)


def tile_size_for_memory(
    tile_size, margin, cols, n_bands, n_outputs, memory_mb, multiple=1
):
    """Largest tile size <= tile_size whose buffers fit in memory_mb.

    A block holds two tile rows of input at a time (the next one is read
    while the network works on the current one): (tile + 2 margin) rows of
    every band, float32; and two tile rows of outputs (one being written),
    `n_outputs` values of 4 bytes a cell, over the block's `cols` columns.
    """
    budget = memory_mb * 2**20

    def needed(tile):
        return tile_row_bytes(tile, margin, cols, n_bands, n_outputs)

    tile = tile_size
    while tile > 16 and needed(tile) > budget:
        tile //= 2
    return max(multiple, tile // multiple * multiple)


def workers_for(requested, n_blocks):
    """Worker processes worth starting: never more than there are blocks."""
    return max(1, min(requested, n_blocks))


def tiling_margin(field, multiple=1):
    """Margin read around each tile: half the field, up to the size multiple.

    Tiles and margins that are multiples of `multiple` keep every tile's
    poolings on the same grid as a whole-region prediction.
    """
    return round_up(field // 2, multiple)
