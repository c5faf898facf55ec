"""Raster I/O on the current region through the GRASS C library.

Rows are read and written with Rast_get_f_row/Rast_put_*_row through the
ctypes bindings that pygrass itself uses: this is faster than r.out.bin and
keeps memory bounded, and it honours the region (nearest-neighbour
resampling) and the MASK as every GRASS module does.
"""

import ctypes
import functools
import json
import shutil
import subprocess
from contextlib import contextmanager

import numpy as np

import grass.script as gs

from iann.errors import IannError
from iann.grass import module_output

_initialised = False


def grass_libraries():
    """GRASS's gis and raster libraries (ctypes), initialised for this process."""
    global _initialised
    from grass.lib import gis as libgis
    from grass.lib import raster as libraster

    if not _initialised:
        libgis.G_gisinit("i.ann")
        _initialised = True
    return libgis, libraster


def refresh_region():
    """Make the C library read the current region again.

    The library caches the region on first use; a caller that changed the
    region in this process (tests, scripts, block windows) must refresh it
    before opening maps. The windows are initialised at once: left for
    later, a map opened next would be mapped to the stale window.
    """
    libgis, libraster = grass_libraries()
    libgis.G_unset_window()
    libraster.Rast_unset_window()
    libraster.Rast__init_window()


def region_shape():
    """Rows and columns of the current region as the C library sees them."""
    _, libraster = grass_libraries()
    return libraster.Rast_window_rows(), libraster.Rast_window_cols()


def split_name(name):
    """Split 'map@mapset' into its parts; the mapset may be empty."""
    if "@" in name:
        base, mapset = name.split("@", 1)
        return base, mapset
    return name, ""


def find_raster(name):
    """Full name (map@mapset) of a raster map, or None when it does not exist."""
    base, mapset = split_name(name)
    found = gs.find_file(base, element="cell", mapset=mapset)
    return found["fullname"] or None


def require_rasters(names):
    """Full names of raster maps; an error naming the first one missing."""
    full = []
    for name in names:
        fullname = find_raster(name)
        if not fullname:
            raise IannError(_("Raster map <{}> not found").format(name))
        full.append(fullname)
    return full


def check_new_raster(name, overwrite):
    """Refuse an existing map of the current mapset without overwrite."""
    if name and not overwrite and find_raster(name + "@" + gs.gisenv()["MAPSET"]):
        raise IannError(
            _("Raster map <{}> exists; use --overwrite to replace it").format(name)
        )


def require_integer_map(name):
    """An error unless the raster map is of type CELL."""
    datatype = raster_info(name)["datatype"]
    if datatype != "CELL":
        raise IannError(
            _(
                "Reference map <{}> is not an integer map (type {}); "
                'convert it with r.mapcalc "ref = int(round(map))"'
            ).format(name, datatype)
        )


def group_members(group):
    """Raster maps of an imagery group, in the group's order (i.group -g)."""
    if not gs.find_file(group, element="group")["fullname"]:
        raise IannError(_("Imagery group <{}> not found").format(group))
    members = module_output.group_members(group)
    if not members:
        raise IannError(_("Imagery group <{}> has no raster maps").format(group))
    return members


@functools.cache
def _row_getters():
    """Rast_get_f_row and Rast_get_c_row taking the row's address as an int.

    The same C functions as the bindings', called with less Python work a
    row (no ctypes pointer object is made): with the GIL released inside,
    readers of several maps in several threads then run side by side.
    """
    _, libraster = grass_libraries()
    # The row's address as a size_t, the same bits as a pointer: GRASS's
    # ctypes preamble changes how c_void_p arguments take a plain int.
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
    return tuple(
        prototype(ctypes.cast(function, ctypes.c_void_p).value)
        for function in (libraster.Rast_get_f_row, libraster.Rast_get_c_row)
    )


class RowReader:
    """Reads rows of one raster map on the current region as float32."""

    def __init__(self, name):
        _, self._lib = grass_libraries()
        base, mapset = split_name(name)
        self.fd = self._lib.Rast_open_old(base, mapset)
        self.cols = self._lib.Rast_input_window_cols()
        self._get_float, self._get_int = _row_getters()

    def read_float(self, row, out):
        """Fill `out` (float32, contiguous, one region row) with NaN for NULL."""
        assert out.dtype == np.float32 and out.flags.c_contiguous
        self._get_float(self.fd, out.ctypes.data, row)

    def read_int(self, row, out):
        """Fill `out` (int32, contiguous) with CELL_NULL for NULL."""
        assert out.dtype == np.int32 and out.flags.c_contiguous
        self._get_int(self.fd, out.ctypes.data, row)

    def read_float_rows(self, row_start, out):
        """Fill `out` (float32, C-contiguous (rows, cols)) from row_start on."""
        assert out.dtype == np.float32 and out.flags.c_contiguous
        get, fd, address, step = (
            self._get_float,
            self.fd,
            out.ctypes.data,
            4 * self.cols,
        )
        for i in range(out.shape[0]):
            get(fd, address + i * step, row_start + i)

    def close(self):
        if self.fd is not None:
            self._lib.Rast_close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RowWriter:
    """Writes rows of a new CELL or FCELL raster map in the current region."""

    def __init__(self, name, mtype="CELL"):
        _, self._lib = grass_libraries()
        self.mtype = mtype
        if mtype == "CELL":
            self.fd = self._lib.Rast_open_new(name, self._lib.CELL_TYPE)
            self._dtype = np.int32
            self._ptr = ctypes.POINTER(self._lib.CELL)
            self._put = self._lib.Rast_put_c_row
        else:
            self.fd = self._lib.Rast_open_new(name, self._lib.FCELL_TYPE)
            self._dtype = np.float32
            self._ptr = ctypes.POINTER(self._lib.FCELL)
            self._put = self._lib.Rast_put_f_row

    def write(self, row):
        """Write the next row: CELL_NULL (CELL) or NaN (FCELL) become NULL."""
        row = np.ascontiguousarray(row, dtype=self._dtype)
        self._put(self.fd, row.ctypes.data_as(self._ptr))

    def close(self):
        if self.fd is not None:
            self._lib.Rast_close(self.fd)
            self.fd = None

    def discard(self):
        """Close without writing anything, so no partial map is left."""
        if self.fd is not None:
            self._lib.Rast_unopen(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        # A map is written only when everything before it went well.
        if kind is None:
            self.close()
        else:
            self.discard()


def _cell_head(region, window, base):
    """A Cell_head of `window` (tiling.Window) of `region` (gs.region())."""
    libgis, _ = grass_libraries()
    head = libgis.Cell_head()
    ctypes.memmove(ctypes.byref(head), ctypes.byref(base), ctypes.sizeof(base))
    head.north = region["n"] - window.row0 * region["nsres"]
    head.south = region["n"] - window.row1 * region["nsres"]
    head.west = region["w"] + window.col0 * region["ewres"]
    head.east = region["w"] + window.col1 * region["ewres"]
    head.rows, head.cols = window.rows, window.cols
    # Already consistent: G_adjust_Cell_head would recompute the
    # resolutions from the extent and report rounding as a change.
    head.ns_res, head.ew_res = region["nsres"], region["ewres"]
    return head


@contextmanager
def input_window(region, read):
    """Maps opened inside read the cells of `read` (tiling.Window) of `region`.

    Reading a block's window sets the raster library's input window only:
    nothing is written through the library. The window it had is set
    back afterwards (without reading the region's file again, a block
    after a block).
    """
    libgis, libraster = grass_libraries()
    base = libgis.Cell_head()
    libgis.G_get_window(ctypes.byref(base))
    libraster.Rast__init_window()
    before = libgis.Cell_head()
    libraster.Rast_get_input_window(ctypes.byref(before))
    # The library checks the window and, with --verbose, says for every
    # block that its cells are not square, as the region's may not be.
    verbosity = libgis.G_verbose()
    libgis.G_set_verbose(min(verbosity, libgis.G_verbose_std()))
    try:
        libraster.Rast_set_input_window(ctypes.byref(_cell_head(region, read, base)))
        yield
    finally:
        libraster.Rast_set_input_window(ctypes.byref(before))
        libgis.G_set_verbose(verbosity)


def current_mask():
    """The raster mask in effect, as a full map name, or None.

    GRASS 8.5 lets the mask have another name (GRASS_MASK) and says which
    with r.mask.status; before, it is the raster MASK of the current mapset.
    """
    if shutil.which("r.mask.status"):
        status = json.loads(gs.read_command("r.mask.status", format="json"))
        return status["name"] if status["present"] else None
    found = gs.find_file("MASK", element="cell", mapset=gs.gisenv()["MAPSET"])
    return found["fullname"] or None


@contextmanager
def masking_suppressed():
    """No automatic masking by the current mapset's MASK inside.

    A block applies the MASK the job was planned with itself, in whatever
    process runs it.
    """
    _, libraster = grass_libraries()
    libraster.Rast_suppress_masking()
    try:
        yield
    finally:
        libraster.Rast_unsuppress_masking()


def read_rows(readers, row_start, row_stop, threads=None):
    """Read rows [row_start, row_stop) of several maps: (bands, rows, cols).

    Band-major, so that every row is read straight into contiguous memory.
    With `threads` (a concurrent.futures executor), the maps are read side
    by side, one a thread: the raster library keeps each open map's state
    apart, and every map was opened before.
    """
    cols = readers[0].cols
    out = np.empty((len(readers), row_stop - row_start, cols), dtype=np.float32)
    if threads is None or len(readers) == 1:
        for band, reader in enumerate(readers):
            reader.read_float_rows(row_start, out[band])
        return out
    list(
        threads.map(
            lambda band: readers[band].read_float_rows(row_start, out[band]),
            range(len(readers)),
        )
    )
    return out


def read_int_rows(reader, row_start, row_stop):
    """Read rows of an integer map as int32 with CELL_NULL for NULL."""
    out = np.empty((row_stop - row_start, reader.cols), dtype=np.int32)
    for i in range(row_stop - row_start):
        reader.read_int(row_start + i, out[i])
    return out


def raster_info(name):
    """r.info's extent, resolution, data type and range as a dict."""
    return module_output.key_values("r.info", flags="gr", map=name)


def read_categories(name):
    """Category labels of a raster map: {value: label}, every labelled value.

    Read through pygrass (Rast_read_cats): r.category without cats= lists
    only the values within the map's range, and a map's categories may
    label classes it never assigns.
    """
    from grass.pygrass.raster.category import Category

    map_name, _at, mapset = name.partition("@")
    categories = Category(map_name, mapset=mapset)
    categories.read()
    labels = {}
    for label, low, high in categories:
        for value in range(int(low), int(low if high is None else high) + 1):
            labels[value] = (label or "").strip()
    return labels


def read_colors(name, values):
    """Colour of each value from the map's colour table, as 'R:G:B'."""
    colors = {}
    rules = gs.read_command("r.colors.out", map=name)
    table = []
    for line in rules.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] in ("nv", "default"):
            continue
        try:
            table.append((float(parts[0]), parts[1]))
        except ValueError:
            continue
    for value in values:
        colors[value] = _interpolate_color(table, value)
    return colors


def _interpolate_color(table, value):
    if not table:
        return None
    table = sorted(table)
    if value <= table[0][0]:
        return table[0][1]
    if value >= table[-1][0]:
        return table[-1][1]
    for (v0, c0), (v1, c1) in zip(table, table[1:]):
        if v0 <= value <= v1:
            if v1 == v0:
                return c0
            t = (value - v0) / (v1 - v0)
            rgb0 = [int(x) for x in c0.split(":")]
            rgb1 = [int(x) for x in c1.split(":")]
            return ":".join(str(round(a + t * (b - a))) for a, b in zip(rgb0, rgb1))
    return table[-1][1]


def remove_maps(names, element="raster"):
    """Remove maps of the current mapset (temporary ones), quietly."""
    names = [n for n in names if n]
    if not names:
        return
    gs.run_command(
        "g.remove",
        type=element,
        name=",".join(names),
        flags="f",
        quiet=True,
        errors="ignore",
        stderr=subprocess.DEVNULL,
    )
