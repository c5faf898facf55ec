"""A batch of points to label: the class and uncertainty maps read, cells
chosen (propose.py), and the point map written with empty class column.

The maps are read on the current region, under the MASK, as every GRASS
module reads them: the region and a MASK say where points may go. With
`nprocs` above 1 the rows are read in parts by as many processes, each
keeping its own candidates, merged after (propose.py says why the points
are the same).
"""

import multiprocessing
import signal

import numpy as np

import grass.script as gs

from iann.errors import IannError
from iann.grass.points import point_coordinates, write_points
from iann.grass.rasters import (
    RowReader,
    raster_info,
    read_categories,
    read_int_rows,
    refresh_region,
    region_shape,
)
from iann.labelling.propose import (
    POOL_PER_POINT,
    Pool,
    choose,
    chunk_rows,
    scan_rows,
)

# The columns written beside the class column to fill.
PREDICTED_COLUMN = "predicted"
PREDICTED_LABEL_COLUMN = "predicted_label"
UNCERTAINTY_COLUMN = "uncertainty"
CELL_NULL = np.iinfo(np.int32).min
# Parts of the rows a reading process takes in turn (see scan).
TASKS_PER_PROCESS = 32


def check_maps(classified, uncertainty):
    """Errors for a class map that is not one, or maps of different grids."""
    info = raster_info(classified)
    if info["datatype"] != "CELL":
        raise IannError(
            _(
                "Raster map <{}> is not a class map (type {}, not integer): give "
                "the class map of i.ann.classify"
            ).format(classified, info["datatype"])
        )
    labels = read_categories(classified)
    if not any(labels.values()):
        raise IannError(
            _(
                "Raster map <{}> has no category labels: give the class map of "
                "i.ann.classify (or label its classes with r.category)"
            ).format(classified)
        )
    other = raster_info(uncertainty)
    keys = ("north", "south", "east", "west", "nsres", "ewres")
    if any(
        abs(float(info[k]) - float(other[k])) > 1e-6 * float(info["nsres"])
        for k in keys
    ):
        raise IannError(
            _(
                "Uncertainty map <{}> is not on the grid of class map <{}> "
                "(another region or resolution): give the maps of one "
                "i.ann.classify run"
            ).format(uncertainty, classified)
        )
    low, high = other["min"], other["max"]
    if low is not None and (float(low) < 0 or float(high) > 1):
        raise IannError(
            _(
                "Uncertainty map <{}> has values from {} to {}, not 0 to 1: give "
                "the uncertainty map of i.ann.classify"
            ).format(uncertainty, low, high)
        )
    return labels


def scan_part(classified, uncertainty, row_start, row_stop, method, seed, size):
    """Candidates (pools) of rows [row_start, row_stop) of the region."""
    refresh_region()
    pools = {}
    with RowReader(classified) as classes, RowReader(uncertainty) as values:
        step = chunk_rows(classes.cols)
        for first in range(row_start, row_stop, step):
            last = min(first + step, row_stop)
            class_rows = read_int_rows(classes, first, last)
            class_rows[class_rows == CELL_NULL] = -1
            uncertainty_rows = np.empty((last - first, values.cols), np.float32)
            values.read_float_rows(first, uncertainty_rows)
            scan_rows(class_rows, uncertainty_rows, first, method, seed, size, pools)
    return pools


def scan(classified, uncertainty, method, seed, size, nprocs):
    """Candidates of the whole region, read by `nprocs` processes.

    The rows are cut into at most TASKS_PER_PROCESS parts a process (each
    part's candidates are merged into the whole's as it ends, and progress
    shown), and at least one chunk of rows each.
    """
    rows, cols = region_shape()
    processes = max(1, min(nprocs, rows))
    parts = min(-(-rows // chunk_rows(cols)), TASKS_PER_PROCESS * processes)
    parts = max(parts, processes)
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    arguments = [
        (classified, uncertainty, int(a), int(b), method, seed, size)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    pools = {}

    def merge(part, done):
        for value, pool in part.items():
            pools.setdefault(value, Pool()).merge(pool, size)
        gs.percent(done, parts, 1)

    gs.percent(0, parts, 1)
    if processes == 1:
        for done, task in enumerate(arguments, start=1):
            merge(scan_part(*task), done)
        return pools
    # fork: the workers inherit this process's GRASS session as is. They
    # ignore Ctrl-C, which this process gets and answers by terminating
    # them (leaving the pool's context), so no worker prints a traceback.
    context = multiprocessing.get_context("fork")
    with context.Pool(
        processes, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)
    ) as workers:
        results = workers.imap_unordered(scan_task, arguments)
        for done, part in enumerate(results, start=1):
            merge(part, done)
    return pools


def scan_task(arguments):
    return scan_part(*arguments)


def propose_points(
    classified,
    uncertainty,
    labelled,
    npoints,
    distance,
    method,
    seed,
    nprocs,
):
    """The Proposal and the class labels: points to label, chosen on the
    current region (under the MASK), away from the `labelled` maps' points."""
    labels = check_maps(classified, uncertainty)
    existing = [point for name in labelled for point in point_coordinates(name)]
    region = gs.region()

    def cell_centre(rows, cols):
        x = region["w"] + (np.asarray(cols) + 0.5) * region["ewres"]
        y = region["n"] - (np.asarray(rows) + 0.5) * region["nsres"]
        return x, y

    size = POOL_PER_POINT * npoints
    while True:
        pools = scan(classified, uncertainty, method, seed, size, nprocs)
        if not pools:
            raise IannError(
                _("Raster map <{}> has no classified cells in the region").format(
                    classified
                )
            )
        proposal = choose(pools, npoints, method, distance, existing, cell_centre)
        if proposal is not None:
            break
        size *= 4
    return proposal, labels


def write_batch(output, proposal, labels, column, label_column, temporary_vectors):
    """The point map to label: `column` (and `label_column`) empty, then the
    predicted class, its label and the uncertainty."""
    columns = [(column, "integer", None)]
    if label_column:
        columns.append((label_column, "varchar(255)", None))
    columns += [
        (PREDICTED_COLUMN, "integer", [int(c) for c in proposal.classes]),
        (
            PREDICTED_LABEL_COLUMN,
            "varchar(255)",
            [labels.get(int(c), "") for c in proposal.classes],
        ),
        (
            UNCERTAINTY_COLUMN,
            "double precision",
            ["{:.6f}".format(u) for u in proposal.uncertainty],
        ),
    ]
    return write_points(output, proposal.x, proposal.y, columns, temporary_vectors)


def reserved_columns():
    """Columns the batch writes itself (besides cat, x and y)."""
    return (
        "cat",
        "x",
        "y",
        PREDICTED_COLUMN,
        PREDICTED_LABEL_COLUMN,
        UNCERTAINTY_COLUMN,
    )
