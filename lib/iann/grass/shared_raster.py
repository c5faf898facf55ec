"""GRASS raster maps that many processes write at once, block by block.

A job's outputs are ordinary GRASS raster maps in the current mapset, in
GRASS's uncompressed format: every row has the same number of bytes, so a
cell's place in the files is known in advance and any process (the
module's own, a local worker, a Dask worker on another machine sharing the
GRASS database) writes the cells of its block straight into the map,
where they stay. Nothing is copied or merged at the end; the map is read
by every GRASS module as any other.

The files, as GRASS's raster library writes them (lib/raster):

- `cellhd/<name>`: the region's header with `format` (bytes per cell
  minus 1, or -1 for FCELL) and `compressed: 0`; written with
  Rast_put_cellhd;
- `cell/<name>` (CELL) or `fcell/<name>` (FCELL, with an empty `cell`):
  rows x cols cells of `nbytes` bytes, big-endian (FCELL: XDR floats;
  CELL of 4 bytes: sign and magnitude);
- `cell_misc/<name>/null`: one bit a cell, rows of ceil(cols / 8) bytes,
  the first cell in the highest bit, 1 for NULL;
- `cell_misc/<name>/f_format` and `f_quant` (FCELL), and the range
  (`range` or `f_range`, written with Rast_write_range and
  Rast_write_fp_range once every block is done).

The data and null files are created at their full size as sparse files;
a block's cells are written by one process, and blocks start on a
multiple of 8 columns, so that no byte of the null file is shared by two
processes.
"""

import ctypes
import math
import os
from dataclasses import dataclass

import numpy as np

from iann.grass import CELL_NULL

# Blocks start on multiples of this many columns (one byte of null bits).
COLUMN_ALIGNMENT = 8


def cell_bytes(values):
    """Bytes a cell of a CELL map of `values` needs in GRASS's format.

    GRASS reads 1 to 3 bytes as unsigned and 4 bytes as sign and magnitude.
    """
    low, high = min(values), max(values)
    if low < 0 or high >= 2**24:
        return 4
    return 1 if high < 2**8 else 2 if high < 2**16 else 3


@dataclass(frozen=True)
class SharedRaster:
    """A raster map of the region of a mapset, written in place by blocks."""

    mapset_path: str
    name: str
    cell_type: str  # "CELL" or "FCELL"
    rows: int
    cols: int
    nbytes: int = 4

    @property
    def data_path(self):
        element = "cell" if self.cell_type == "CELL" else "fcell"
        return os.path.join(self.mapset_path, element, self.name)

    @property
    def null_path(self):
        return os.path.join(self.mapset_path, "cell_misc", self.name, "null")

    @property
    def null_row_bytes(self):
        return math.ceil(self.cols / 8)

    def file_sizes(self):
        """Bytes of the data and null files once every cell is written."""
        return self.rows * self.cols * self.nbytes, self.rows * self.null_row_bytes

    def is_complete(self):
        """Whether the map's header and files exist at their full size."""
        try:
            sizes = os.path.getsize(self.data_path), os.path.getsize(self.null_path)
        except OSError:
            return False
        header = os.path.join(self.mapset_path, "cellhd", self.name)
        return os.path.isfile(header) and sizes == self.file_sizes()

    def create(self):
        """Write the header and the (sparse) files of the map.

        Runs in a GRASS process whose current mapset is the map's and whose
        raster library sees the job's region.
        """
        from iann.grass.rasters import grass_libraries

        libgis, libraster = grass_libraries()
        head = libgis.Cell_head()
        libgis.G_get_window(ctypes.byref(head))
        if (head.rows, head.cols) != (self.rows, self.cols):
            raise ValueError("the region is not the map's")
        head.compressed = 0
        head.format = self.nbytes - 1 if self.cell_type == "CELL" else -1
        name = self.name.encode()
        libraster.Rast_put_cellhd(name, ctypes.byref(head))
        misc = os.path.dirname(self.null_path)
        os.makedirs(misc, exist_ok=True)
        os.makedirs(os.path.dirname(self.data_path), exist_ok=True)
        if self.cell_type == "FCELL":
            os.makedirs(os.path.join(self.mapset_path, "cell"), exist_ok=True)
            open(os.path.join(self.mapset_path, "cell", self.name), "wb").close()
            with open(os.path.join(misc, "f_format"), "w") as f:
                f.write("type: float\nbyte_order: xdr\n")
            with open(os.path.join(misc, "f_quant"), "w") as f:
                f.write("round")
        for path, size in zip((self.data_path, self.null_path), self.file_sizes()):
            with open(path, "wb") as f:
                f.truncate(size)
        # An empty history and category table, as Rast_close leaves them.
        history = libraster.History()
        libraster.Rast_short_history(name, b"raster", ctypes.byref(history))
        libraster.Rast_write_history(name, ctypes.byref(history))
        categories = libraster.Categories()
        libraster.Rast_init_cats(b"", ctypes.byref(categories))
        libraster.Rast_write_cats(name, ctypes.byref(categories))
        libraster.Rast_free_cats(ctypes.byref(categories))

    def write_range(self, low, high):
        """The map's range (`None` for a map of NULL cells only)."""
        from iann.grass.rasters import grass_libraries

        _, libraster = grass_libraries()
        if self.cell_type == "CELL":
            value, cast = libraster.Range(), int
            init, update = libraster.Rast_init_range, libraster.Rast_update_range
            write = libraster.Rast_write_range
        else:
            value, cast = libraster.FPRange(), float
            init, update = libraster.Rast_init_fp_range, libraster.Rast_update_fp_range
            write = libraster.Rast_write_fp_range
        init(ctypes.byref(value))
        if low is not None:
            update(cast(low), ctypes.byref(value))
            update(cast(high), ctypes.byref(value))
        write(self.name.encode(), ctypes.byref(value))

    def writer(self):
        return SharedRasterWriter(self)


def write_at(fd, array, offset):
    """Write all of a contiguous array at `offset` of a file."""
    view = memoryview(array).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class SharedRasterWriter:
    """Writes windows of cells into a SharedRaster; keeps their range."""

    def __init__(self, raster):
        self.raster = raster
        self.low = self.high = None
        self.data = os.open(raster.data_path, os.O_WRONLY)
        try:
            self.nulls = os.open(raster.null_path, os.O_WRONLY)
        except OSError:
            os.close(self.data)
            raise

    def encode(self, values, nulls):
        """The cells as GRASS stores them, (rows, cols * nbytes) bytes."""
        raster = self.raster
        if raster.cell_type == "FCELL":
            encoded = values.astype(">f4")
        elif raster.nbytes == 1:
            encoded = values.astype(np.uint8)  # CELL_NULL wraps to 0
        elif raster.nbytes == 2:
            encoded = values.astype(">u2")
        else:
            wide = values.astype(np.int64)
            magnitude = np.abs(wide)
            if raster.nbytes == 4:
                magnitude |= np.where(wide < 0, 0x80000000, 0)
            magnitude[nulls] = 0
            encoded = magnitude.astype(">u4")
            if raster.nbytes == 3:
                encoded = encoded.view(np.uint8).reshape(values.shape + (4,))[..., 1:]
        return encoded.reshape(values.shape[0], -1)

    def update_range(self, values, nulls):
        if self.raster.cell_type == "FCELL":
            low, high = np.fmin.reduce(values, axis=None), np.fmax.reduce(
                values, axis=None
            )
            if np.isnan(low):
                return
        else:
            if nulls.all():
                return
            high = values.max()
            low = values.min() if not nulls.any() else values[~nulls].min()
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)

    def write(self, window, values):
        """Write `values` (CELL_NULL or NaN for NULL) at tiling.Window `window`."""
        raster = self.raster
        if window.col0 % COLUMN_ALIGNMENT and window.col0 != 0:
            raise ValueError("a window must start on a multiple of 8 columns")
        if raster.cell_type == "FCELL":
            nulls = np.isnan(values)
        else:
            nulls = values == CELL_NULL
        self.update_range(values, nulls)
        encoded = self.encode(values, nulls)
        bits = np.packbits(nulls, axis=1)
        row_bytes = raster.cols * raster.nbytes
        start = window.col0 * raster.nbytes
        null_start = window.col0 // 8
        if window.col0 == 0 and window.col1 == raster.cols:
            # Whole rows: one write for the window.
            write_at(self.data, encoded, window.row0 * row_bytes)
            write_at(self.nulls, bits, window.row0 * raster.null_row_bytes)
            return
        for i, row in enumerate(range(window.row0, window.row1)):
            write_at(self.data, encoded[i], row * row_bytes + start)
            write_at(self.nulls, bits[i], row * raster.null_row_bytes + null_start)

    def close(self):
        for fd in (self.data, self.nulls):
            if fd is not None:
                os.close(fd)
        self.data = self.nulls = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
