"""Writing a planned patch dataset: arrays in chunks, metadata, split map."""

import errno
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import grass.script as gs

from iann.errors import IannError
from iann.formats.dataset import ARRAYS, write_metadata
from iann.formats.folders import atomic_folder
from iann.grass.rasters import RowWriter
from iann.patches.sampling import image_patches, label_patches


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


def write_dataset(folder, plan, overwrite=False):
    """Write the planned patches into a new dataset folder.

    Patches are cut from the band stack and written a chunk at a time, so
    the dataset is never held in memory. A failure, a full disk included,
    leaves no half-written folder and an existing one untouched.
    """
    size = plan.metadata.patch_size
    bands = plan.stack.shape[0]
    try:
        with atomic_folder(folder, overwrite) as tmp:
            for part, flat in plan.origins.items():
                write_npy_chunks(
                    os.path.join(tmp, ARRAYS[part + "_images"]),
                    plan.dtype,
                    (len(flat), size, size, bands),
                    image_patches(plan.stack, flat, plan.width, size, plan.dtype),
                )
                write_npy_chunks(
                    os.path.join(tmp, ARRAYS[part + "_labels"]),
                    np.uint8,
                    (len(flat), size, size),
                    label_patches(plan.labels[part], flat, plan.width, size),
                )
            write_metadata(tmp, plan.metadata)
    except OSError as error:
        reason = (
            _("the disk is full")
            if error.errno in (errno.ENOSPC, errno.EDQUOT)
            else error.strerror or str(error)
        )
        raise IannError(
            _("Cannot write the dataset folder <{}>: {}").format(folder, reason)
        )


def write_validation_map(name, validation_cells):
    """Raster map of the split: 1 in validation blocks, 0 in training blocks."""
    with RowWriter(name, "CELL") as writer:
        for row in validation_cells:
            writer.write(row.astype(np.int32))
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
