"""One block of a classification job, in whatever process runs it.

The module's own process, a worker of a local Dask cluster or a Dask
worker on another machine run the same `run_block`: it makes the process
a GRASS process of the job's project if it is not one yet, writes in a
mapset of its own (the GRASS way for several processes to write at once),
loads the bundle's engine once per process, classifies the block through
the tile pipeline and marks it done. Nothing here imports GRASS or Keras
at import time, so that a bare Dask worker can unpickle the task.

A block's maps are complete once its marker file exists: a rerun of the
same job skips it (resume), a block killed half-way is classified again.
"""

import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import IannError
from .malloc import reuse_freed_memory
from .pipeline import PredictionSettings, classify_block

DONE_FOLDER = "i.ann_blocks_done"


@dataclass(frozen=True)
class BlockJob:
    """Everything a process needs to classify any block of a job."""

    id: str
    gisbase: str
    gisdbase: str
    location: str
    region: dict
    bands: tuple
    mask: str
    bundle: str
    engine: str
    precision: str
    threads: int
    settings: PredictionSettings
    tile_size: int
    n_classes: int
    uncertainty: bool

    def mapset_for(self, worker):
        return "iann_{}_{}".format(self.id, worker)

    def map_names(self, index):
        """Names of a block's maps: classes, probabilities, uncertainty."""
        base = "b{:06d}".format(index)
        probabilities = []
        if self.settings.probabilities:
            probabilities = ["{}_p{}".format(base, k) for k in range(self.n_classes)]
        return base, probabilities, base + "_u" if self.uncertainty else None


@dataclass
class BlockResult:
    """What a process reports back for a classified block."""

    index: int
    mapset: str
    worker: str
    cells: int
    mapped: list
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
    """A name for this process's mapset: its Dask worker, or `local`."""
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        return "local"
    import hashlib

    return "w" + hashlib.sha1(address.encode()).hexdigest()[:10]


def check_visible(job, worker):
    """Clear errors when this process cannot see the database or the bundle."""
    permanent = os.path.join(job.gisdbase, job.location, "PERMANENT")
    if not os.path.isdir(permanent):
        raise IannError(
            "Dask worker <{}> on {} cannot see the GRASS project <{}>: the "
            "GRASS database must be on a filesystem shared by all workers".format(
                worker, os.uname().nodename, os.path.dirname(permanent)
            )
        )
    if not os.path.isfile(os.path.join(job.bundle, "metadata.json")):
        raise IannError(
            "Dask worker <{}> on {} cannot see the model bundle <{}>".format(
                worker, os.uname().nodename, job.bundle
            )
        )


def prepare_grass(job, mapset):
    """Make this process a GRASS process of the job's project (once)."""
    path = os.path.join(job.gisdbase, job.location, mapset)
    if not os.path.isdir(path):
        os.makedirs(os.path.join(job.gisdbase, job.location), exist_ok=True)
        os.mkdir(path)
        with open(
            os.path.join(job.gisdbase, job.location, "PERMANENT", "DEFAULT_WIND")
        ) as f:
            wind = f.read()
        with open(os.path.join(path, "WIND"), "w") as f:
            f.write(wind)
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
        # A bare worker: a session file of its own, in its own mapset.
        handle, gisrc = tempfile.mkstemp(prefix="i.ann-gisrc-")
        with os.fdopen(handle, "w") as f:
            f.write(
                "GISDBASE: {}\nLOCATION_NAME: {}\nMAPSET: {}\n".format(
                    job.gisdbase, job.location, mapset
                )
            )
        os.environ["GISRC"] = gisrc
    import grass.script  # noqa: F401 - installs the translation function _

    _PROCESS["grass"] = True


def process_engine(job):
    """The job's engine, loaded once for all the blocks of this process."""
    key = (job.bundle, job.engine, job.precision, job.threads)
    if _PROCESS["engine_key"] != key:
        if job.engine == "keras" and "tensorflow" not in sys.modules:
            # The process's share of the cores, read by TensorFlow at start.
            os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(job.threads))
        from .bundle import read_bundle_metadata
        from .engines import load_engine

        metadata = read_bundle_metadata(job.bundle)
        _PROCESS["engine"] = load_engine(
            job.bundle, metadata, job.engine, job.threads, job.precision
        )
        _PROCESS["engine_key"] = key
        _PROCESS["loads"] += 1
    return _PROCESS["engine"]


class GrassSource:
    """The bands of a block's read window, masked by the user's MASK."""

    def __init__(self, bands, mask, read):
        from .grassio import RowReader

        self.read_window = read
        self.readers = [RowReader(name) for name in bands]
        self.mask = RowReader(mask) if mask else None

    def read(self, window):
        from .grassio import read_rows

        start = window.row0 - self.read_window.row0
        stop = window.row1 - self.read_window.row0
        block = read_rows(self.readers, start, stop)
        if self.mask is not None:
            mask = read_rows([self.mask], start, stop)[0]
            block[:, np.isnan(mask) | (mask == 0)] = np.nan
        return block

    def close(self):
        for reader in self.readers + [self.mask]:
            if reader is not None:
                reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GrassSink:
    """New maps of a block's core: classes, probabilities, uncertainty."""

    def __init__(self, classes, probabilities, uncertainty):
        from .grassio import RowWriter

        self.classes = RowWriter(classes, "CELL")
        self.probabilities = [RowWriter(name, "FCELL") for name in probabilities]
        self.uncertainty = RowWriter(uncertainty, "FCELL") if uncertainty else None

    def writers(self):
        return [self.classes] + self.probabilities + [self.uncertainty]

    def write(self, window, classes, probabilities, uncertainty):
        for line in classes:
            self.classes.write(line)
        for k, writer in enumerate(self.probabilities):
            for line in probabilities[..., k]:
                writer.write(line)
        if self.uncertainty is not None:
            for line in uncertainty:
                self.uncertainty.write(line)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        # The class map is closed last: a block's maps exist together.
        for writer in reversed(self.writers()):
            if writer is not None:
                writer.__exit__(kind, value, traceback)


def done_marker(job, mapset, index):
    folder = os.path.join(job.gisdbase, job.location, mapset, DONE_FOLDER)
    return os.path.join(folder, "{:06d}".format(index))


def mark_done(job, mapset, index):
    path = done_marker(job, mapset, index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)


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

    One block at a time per process: GRASS's window and current mapset
    belong to the whole process, so a Dask worker started with several
    threads runs its blocks one after the other.
    """
    with _ONE_BLOCK_AT_A_TIME:
        return _run_block(job, block, progress)


def _run_block(job, block, progress):
    worker = worker_name()
    mapset = job.mapset_for(worker)
    check_visible(job, worker)
    prepare_grass(job, mapset)
    # A Dask nanny starts its workers with glibc's heap reuse frozen: each
    # tile's buffers were then mapped and zero-filled afresh (5 times the
    # page faults of the same blocks with heap reuse).
    reuse_freed_memory()
    from .grassio import _lib, block_windows, in_mapset

    _lib()
    name_block_on_fatal_error()
    _PROCESS["block"] = describe(job, block)
    try:
        engine = process_engine(job)
        classes, probabilities, uncertainty = job.map_names(block.index)
        with in_mapset(job.gisdbase, job.location, mapset):
            with block_windows(job.region, block.read, block.core):
                with GrassSource(job.bands, job.mask, block.read) as source:
                    with GrassSink(classes, probabilities, uncertainty) as sink:
                        stats = classify_block(
                            engine,
                            job.settings,
                            source,
                            sink,
                            block,
                            job.tile_size,
                            progress,
                        )
    except IannError:
        raise
    except Exception as error:  # noqa: BLE001 - named with its block, no retry
        raise IannError(
            "Classifying {} failed: {}: {}".format(
                describe(job, block), type(error).__name__, error
            )
        ) from None
    finally:
        _PROCESS["block"] = None
    mark_done(job, mapset, block.index)
    return BlockResult(
        index=block.index,
        mapset=mapset,
        worker=worker,
        cells=stats.cells,
        mapped=stats.mapped.tolist(),
        seconds=stats.seconds,
        network_seconds=stats.network_seconds,
        engine_loads=_PROCESS["loads"],
    )
