"""Reading the mapset for a patch dataset: bands on the region's grid.

Bands coarser than the region are interpolated by r.resamp.interp in the
background while the others are read; the reference is read as integers,
with its classes' labels and colours.
"""

from contextlib import ExitStack

import numpy as np

import grass.script as gs

from iann.errors import IannError
from iann.grass.rasters import (
    RowReader,
    raster_info,
    read_categories,
    read_colors,
    read_int_rows,
    read_rows,
    require_integer_map,
)
from iann.grass.temporary import temporary_map_name


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
            temporary = temporary_map_name("resampled_{}".format(i))
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
        with RowReader(finish_resampling(bands, i, running)) as reader:
            stack[i] = read_rows([reader], 0, region["rows"])[0]
    return stack, records, infos


def read_band_stack(maps):
    """Read bands on the current region: (bands, rows, cols) float32, NaN = NULL."""
    with ExitStack() as stack:
        readers = [stack.enter_context(RowReader(name)) for name in maps]
        return read_rows(readers, 0, gs.region()["rows"])


def read_reference(name):
    """Read an integer reference map: int32 with CELL_NULL for NULL."""
    require_integer_map(name)
    with RowReader(name) as reader:
        return read_int_rows(reader, 0, gs.region()["rows"])


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
