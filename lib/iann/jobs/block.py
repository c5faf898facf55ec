"""One block of a classification job, in whatever process runs it.

The module's own process, a worker of a local Dask cluster or a Dask
worker on another machine run the same `run_block`: it makes the process
a GRASS process of the job's project if it is not one yet, loads the
bundle's engine once per process, reads the block's bands through GRASS's
raster library, classifies them through the tile pipeline, writes the
block's cells straight into the job's output maps (grass/shared_raster.py) and
marks it done. Nothing here imports GRASS or Keras at import time, so
that a bare Dask worker can unpickle the task.

A block is written once its marker file exists; the marker holds what the
job needs of the block at its end (cells, classes mapped, ranges): a rerun
of the same job skips it (resume), a block killed half-way is classified
again.
"""

import atexit
import errno
import json
import os
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from iann.errors import DiskFull, IannError
from iann.formats.bundle import METADATA_FILE
from iann.malloc import reuse_freed_memory
from iann.predict.pipeline import PredictionSettings, classify_block


@dataclass(frozen=True)
class BlockJob:
    """Everything a process needs to classify any block of a job."""

    id: str
    gisbase: str
    gisdbase: str
    location: str
    mapset: str
    region: dict
    bands: tuple
    mask: str
    bundle: str
    engine: str
    precision: str
    threads: int
    settings: PredictionSettings
    tile_size: int
    # shared_raster.SharedRaster: the class map, one probability map per
    # class (or none), the uncertainty map (or None).
    classes: object
    probabilities: tuple
    uncertainty: object
    markers: str

    @property
    def mapset_folder(self):
        return os.path.join(self.gisdbase, self.location, self.mapset)

    def outputs(self):
        """The maps of the job, in the order of BlockResult.ranges."""
        return [self.classes, *self.probabilities] + (
            [self.uncertainty] if self.uncertainty else []
        )


@dataclass
class BlockResult:
    """What a process reports back for a classified block (and its marker)."""

    index: int
    worker: str
    cells: int
    mapped: list
    # [low, high] of each output map's cells in the block (None: all NULL).
    ranges: list
    seconds: float
    network_seconds: float
    engine_loads: int
    pid: int = field(default_factory=os.getpid)
    # The process's peak resident memory so far (bytes), for the job summary.
    peak_memory: int = field(default_factory=lambda: peak_resident_memory())


def peak_resident_memory():
    """This process's peak resident set size in bytes (Linux: ru_maxrss in kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_ONE_BLOCK_AT_A_TIME = threading.Lock()
# This process's GRASS set-up and loaded engine, kept between blocks.
_PROCESS = {
    "grass": False,
    "engine": None,
    "engine_key": None,
    "loads": 0,
    "on_fatal": [],
}


def worker_name():
    """A name for this process in the job's summary: its Dask worker, or `local`."""
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        return "local"
    import hashlib

    return "w" + hashlib.sha1(address.encode()).hexdigest()[:10]


def visibility_problem(job):
    """What this process cannot see of the job (project, bundle), or None.

    Asked of every worker before a job starts (cluster.py) and by every
    block (a worker may join later). Untranslated: workers have no GRASS
    message catalogue.
    """
    project = os.path.join(job.gisdbase, job.location)
    if not os.path.isdir(os.path.join(project, "PERMANENT")):
        return (
            "cannot see the GRASS project <{}>: the GRASS database must be on "
            "a filesystem shared by all workers".format(project)
        )
    if not os.path.isfile(os.path.join(job.bundle, METADATA_FILE)):
        return "cannot see the model bundle <{}>".format(job.bundle)
    return None


def check_visible(job, worker):
    """A clear error when this process cannot see the project or the bundle."""
    problem = visibility_problem(job)
    if problem:
        raise IannError(
            "Dask worker <{}> on {} {}".format(worker, os.uname().nodename, problem)
        )


def prepare_grass(job):
    """Make this process a GRASS process of the job's project (once).

    A bare worker gets a session file of its own in the job's mapset: it
    reads maps there and writes none through GRASS's library.
    """
    if _PROCESS["grass"]:
        return
    gisbase = os.environ.setdefault("GISBASE", job.gisbase)
    libraries = os.path.join(gisbase, "lib")
    known = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    if libraries not in known:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libraries] + known)
    python = os.path.join(gisbase, "etc", "python")
    if python not in sys.path:
        sys.path.append(python)
    if not os.environ.get("GISRC"):
        handle, gisrc = tempfile.mkstemp(prefix="i.ann-gisrc-")
        with os.fdopen(handle, "w") as f:
            f.write(
                "GISDBASE: {}\nLOCATION_NAME: {}\nMAPSET: {}\n".format(
                    job.gisdbase, job.location, job.mapset
                )
            )
        os.environ["GISRC"] = gisrc
        # Removed when the worker process ends (GRASS reads it at start-up).
        atexit.register(remove_file, gisrc)
    import grass.script  # noqa: F401 - installs the translation function _

    _PROCESS["grass"] = True


def remove_file(path):
    try:
        os.remove(path)
    except OSError:
        pass


def process_engine(job):
    """The job's engine, loaded once for all the blocks of this process."""
    key = (job.bundle, job.engine, job.precision, job.threads, job.settings.class_scale)
    if _PROCESS["engine_key"] != key:
        if job.engine == "keras" and "tensorflow" not in sys.modules:
            # The process's share of the cores, read by TensorFlow at start.
            os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(job.threads))
        if job.engine == "keras":
            # Several worker processes may share a GPU (reading and writing
            # blocks while the others' networks run): none may take all of
            # its memory at start, as TensorFlow and JAX do by default.
            os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        from iann.formats.bundle import read_bundle_metadata
        from iann.predict.engines import load_engine

        metadata = read_bundle_metadata(job.bundle)
        _PROCESS["engine"] = load_engine(
            job.bundle,
            metadata,
            job.engine,
            job.threads,
            job.precision,
            job.settings.class_scale,
        )
        _PROCESS["engine_key"] = key
        _PROCESS["loads"] += 1
    return _PROCESS["engine"]


class GrassSource:
    """The bands of a block's read window, masked by the job's MASK.

    Opened inside grass/rasters.py input_window: row 0 is the window's first row.
    The maps (bands and MASK) are read side by side, one a thread.
    """

    def __init__(self, bands, mask, read):
        from concurrent.futures import ThreadPoolExecutor

        from iann.grass.rasters import RowReader

        self.read_window = read
        self.readers = []
        self.threads = None
        try:
            for name in list(bands) + ([mask] if mask else []):
                self.readers.append(RowReader(name))
        except BaseException:
            self.close()
            raise
        self.masked = bool(mask)
        self.threads = ThreadPoolExecutor(
            len(self.readers), thread_name_prefix="i.ann-read"
        )

    def read(self, window):
        from iann.grass.rasters import read_rows

        start = window.row0 - self.read_window.row0
        stop = window.row1 - self.read_window.row0
        block = read_rows(self.readers, start, stop, self.threads)
        if self.masked:
            block, mask = block[:-1], block[-1]
            block[:, np.isnan(mask) | (mask == 0)] = np.nan
        return block

    def close(self):
        if self.threads is not None:
            self.threads.shutdown()
        for reader in self.readers:
            reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SharedRasterSink:
    """A block's cells written into the job's maps: classes, probabilities,
    uncertainty (pipeline's sink)."""

    def __init__(self, job):
        self.writers = []
        try:
            for raster in job.outputs():
                self.writers.append(raster.writer())
        except BaseException:
            self.close()
            raise
        self.classes = self.writers[0]
        self.probabilities = self.writers[1 : 1 + len(job.probabilities)]
        self.uncertainty = self.writers[-1] if job.uncertainty else None

    def write(self, window, classes, probabilities, uncertainty):
        self.classes.write(window, classes)
        for k, writer in enumerate(self.probabilities):
            writer.write(window, probabilities[k])
        if self.uncertainty is not None:
            self.uncertainty.write(window, uncertainty)

    def ranges(self):
        return [
            None if w.low is None else [w.low.item(), w.high.item()]
            for w in self.writers
        ]

    def close(self):
        for writer in self.writers:
            writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


MARKER_SUFFIX = ".json"


def marker_path(job, index):
    return os.path.join(job.markers, "{:06d}{}".format(index, MARKER_SUFFIX))


def mark_done(job, result):
    """Write the block's marker (atomically: a marker is whole or absent)."""
    path = marker_path(job, result.index)
    with open(path + ".tmp", "w") as f:
        json.dump(asdict(result), f)
    os.replace(path + ".tmp", path)


def read_marker(path):
    with open(path) as f:
        return BlockResult(**json.load(f))


def describe(job, block):
    """A block's place in words: rows, columns and coordinates."""
    region, core = job.region, block.core
    return "block {} (rows {}-{}, columns {}-{}; n={} s={} w={} e={})".format(
        block.index,
        core.row0 + 1,
        core.row1,
        core.col0 + 1,
        core.col1,
        region["n"] - core.row0 * region["nsres"],
        region["n"] - core.row1 * region["nsres"],
        region["w"] + core.col0 * region["ewres"],
        region["w"] + core.col1 * region["ewres"],
    )


def name_block_on_fatal_error():
    """GRASS ends the process on a fatal error: say in which block first.

    A GRASS fatal error (G_fatal_error: a map that cannot be read or
    written, a full disk) ends the process from C: no Python exception,
    no `finally`, no atexit. The callbacks given to `on_grass_fatal` run
    then instead, after the block is named.
    """
    if _PROCESS.get("handler"):
        return
    from grass.lib import gis as libgis

    def handler(_closure):
        if _PROCESS.get("block"):
            os.write(
                2, "ERROR: while classifying {}\n".format(_PROCESS["block"]).encode()
            )
        for pid, callback in reversed(_PROCESS["on_fatal"]):
            if pid != os.getpid():
                continue  # registered by the parent of a forked process
            try:
                callback()
            except BaseException:  # noqa: BLE001 - the process ends anyway
                pass

    # Kept in _PROCESS: the C library holds the callback for the process.
    _PROCESS["handler"] = libgis.G_add_error_handler.argtypes[0](handler)
    libgis.G_add_error_handler(_PROCESS["handler"], None)


def on_grass_fatal(callback):
    """Run `callback()` if a GRASS fatal error ends this process."""
    name_block_on_fatal_error()
    _PROCESS["on_fatal"].append((os.getpid(), callback))


def forget_grass_fatal(callback):
    _PROCESS["on_fatal"][:] = [c for c in _PROCESS["on_fatal"] if c[1] is not callback]


def run_block(job, block, progress=None):
    """Classify one block of the job in this process; return a BlockResult.

    One block at a time per process: GRASS's input window belongs to the
    whole process, so a Dask worker started with several
    threads runs its blocks one after the other.
    """
    with _ONE_BLOCK_AT_A_TIME:
        return _run_block(job, block, progress)


def _run_block(job, block, progress):
    worker = worker_name()
    check_visible(job, worker)
    prepare_grass(job)
    # A Dask nanny starts its workers with glibc's heap reuse frozen: each
    # tile's buffers were then mapped and zero-filled afresh (5 times the
    # page faults of the same blocks with heap reuse).
    reuse_freed_memory()
    from iann.grass.rasters import grass_libraries, input_window, masking_suppressed

    grass_libraries()
    name_block_on_fatal_error()
    _PROCESS["block"] = describe(job, block)
    try:
        engine = process_engine(job)
        with masking_suppressed(), input_window(job.region, block.read):
            with GrassSource(job.bands, job.mask, block.read) as source:
                with SharedRasterSink(job) as sink:
                    stats = classify_block(
                        engine,
                        job.settings,
                        source,
                        sink,
                        block,
                        job.tile_size,
                        progress,
                    )
                    ranges = sink.ranges()
    except IannError:
        raise
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_in(job, block, error) from None
        raise block_failed(job, block, error) from None
    except Exception as error:  # noqa: BLE001 - named with its block, no retry
        raise block_failed(job, block, error) from None
    finally:
        _PROCESS["block"] = None
    result = BlockResult(
        index=block.index,
        worker=worker,
        cells=stats.cells,
        mapped=stats.mapped.tolist(),
        ranges=ranges,
        seconds=stats.seconds,
        network_seconds=stats.network_seconds,
        engine_loads=_PROCESS["loads"],
    )
    try:
        mark_done(job, result)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_in(job, block, error) from None
        raise
    return result


def disk_full_in(job, block, error):
    # Plain text: workers have no gettext; the job's process says the rest.
    return DiskFull("{}: {}".format(describe(job, block), error.strerror))


def block_failed(job, block, error):
    return IannError(
        "Classifying {} failed: {}: {}".format(
            describe(job, block), type(error).__name__, error
        )
    )
