"""A classification job: one plan of blocks, run anywhere, written in place.

The region is cut into a deterministic grid of blocks (predict/tiling.py). One
process, N local processes (a Dask LocalCluster) or a Dask cluster all
classify the blocks through block.run_block, each block straight into
the job's output maps, which exist from the start under temporary names
in the current mapset (grass/shared_raster.py): there is nothing to merge. When
every block is done, the maps get their ranges, categories, colours and
history and are renamed to the outputs (outputs.py).

The job has an identity (a hash of everything that makes its maps, the
bundle's and the bands' content included): run the same command again
after an interruption and the blocks already written are kept, only the
missing ones are classified; a command for the same output that differs
in anything is another job, and removes the earlier one's maps. A job
that fails removes its maps: only an interruption keeps them.
"""

import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace


import grass.script as gs

from iann.errors import ClusterLost, IannError
from iann.formats.bundle import (
    BundleMetadata,
    check_model_file,
    read_bundle_metadata,
)
from iann.grass.bands import resampled_bands
from iann.grass.disk import disk_full, mapset_folder
from iann.grass.rasters import current_mask, remove_maps
from iann.grass.shared_raster import COLUMN_ALIGNMENT, SharedRaster, cell_bytes
from iann.grass.temporary import temporary_map_name
from iann.jobs.block import BlockJob, forget_grass_fatal, on_grass_fatal
from iann.jobs.checks import check_request, check_resolution, image_statistics
from iann.jobs.outputs import OutputMaps, finish, segment_sums, write_segment_classes
from iann.jobs.runs import run_in_process, run_on_dask
from iann.jobs.store import (
    OutputLock,
    block_results,
    check_space,
    end_job,
    job_identity,
    keep_for_resume,
    markers_folder,
    start_job,
    temporary_name,
)
from iann.nn.devices import accelerators, gpu_present, usable_precision
from iann.nn.normalise import bundle_transform
from iann.predict.decision import class_scale, rule_description
from iann.predict.engines import choose_engine
from iann.predict.precision import REDUCED_PRECISIONS, choose_precision
from iann.predict.pipeline import PredictionSettings
from iann.predict.tiling import (
    block_grid,
    block_size_for,
    round_up,
    tile_size_for_memory,
    widest_block,
)


@dataclass
class ClassifyRequest:
    """What the user asked i.ann.classify for (the module's options)."""

    bands: list
    bundle: str
    output: str
    probabilities: str = None
    uncertainty: str = None
    uncertainty_method: str = "entropy"
    segments: str = None
    normalize_image: bool = False
    augment: bool = False
    engine: str = "auto"
    precision: str = "float32"
    tile_size: int = 1024
    block_size: int = 2048
    # Columns of a block; None: as many as memory_mb allows (block_width).
    block_cols: int = None
    memory_mb: int = 1024
    batch: int = 1
    nprocs: int = 1
    scheduler: str = None
    gpu: bool = False
    # The most probable class, whatever decision rule the bundle has.
    argmax: bool = False
    overwrite: bool = False


@dataclass
class JobPlan:
    """A job ready to run: its blocks, the engine, the maps it makes."""

    job: BlockJob
    blocks: list
    block_size: int
    block_cols: int
    metadata: BundleMetadata
    bands: list
    outputs: OutputMaps
    engine: object


@dataclass
class JobResult:
    """What a finished job wrote, for messages and the accuracy report."""

    outputs: OutputMaps
    cells: int
    blocks: int
    blocks_resumed: int
    processes: int
    engine_loads: int
    peak_memory: int = 0
    # Seconds of the job's steps in the module's process: the plan, the
    # maps made or found again (resume), the blocks, the outputs finished.
    seconds: dict = field(default_factory=dict)


def plan(request, temporary_maps):
    """Check the request and cut the region into the job's blocks."""
    metadata = read_bundle_metadata(request.bundle)
    if not metadata.imported:
        check_model_file(request.bundle)
    bands, outputs = check_request(request, metadata)
    precision, problem = usable_precision(request.precision, request.gpu)
    if problem:
        gs.warning(problem)
        # The job is that of the precision it runs in (its identity too);
        # the caller's request stays as it was.
        request = replace(request, precision=precision)
    cpu_precision = request.precision in REDUCED_PRECISIONS + ("auto",)
    engine = choose_engine(
        request.bundle,
        metadata,
        request.engine,
        "float32" if cpu_precision else request.precision,
        request.gpu,
    )
    if engine.warning:
        gs.warning(engine.warning)
    if cpu_precision:
        precision, why, warning = choose_precision(
            request.bundle,
            metadata,
            request.precision,
            engine.name,
            request.gpu
            or (engine.name == "keras" and gpu_present() and bool(accelerators())),
        )
        if warning:
            gs.warning(warning)
        say = gs.message if precision != "float32" or warning else gs.verbose
        say(_("Precision {} ({})").format(precision, why))
        request = replace(request, precision=precision)
        engine = replace(engine, precision=precision)
    mean, std = bundle_transform(metadata)
    if request.normalize_image:
        mean, std = image_statistics(bands)
        gs.verbose(_("Band statistics recomputed on the input"))
    method = metadata.dataset.get("sampling", {}).get("resample")
    readable, _records = resampled_bands(bands, method or "bilinear", temporary_maps)
    # Worker processes read the maps whatever their search path: every map
    # is named with its mapset.
    readable = [gs.find_file(name, element="cell")["fullname"] for name in readable]
    region = gs.region()
    check_resolution(metadata, region, request.bundle)
    margin = int(metadata.margin)
    multiple = int(metadata.size_multiple)
    # Blocks start on whole bytes of the maps' null bits, and on the
    # network's pooling grid.
    grid = math.lcm(multiple, COLUMN_ALIGNMENT)
    block_size = block_size_for(request.block_size, grid, margin)
    if block_size != request.block_size:
        gs.verbose(
            _(
                "block_size {} rounded to {} (a multiple of {} cells, at least "
                "the margin of {} cells)"
            ).format(request.block_size, block_size, grid, margin)
        )
    if metadata.input_size:
        # A network of fixed input size: every tile is read with its margins
        # into that size, whatever tile_size says.
        request = replace(request, tile_size=metadata.input_size - 2 * margin)
    values = tuple(c["value"] for c in metadata.classes)
    settings = PredictionSettings(
        mean=mean,
        std=std,
        values=values,
        margin=margin,
        multiple=multiple,
        augment=request.augment,
        probabilities=bool(outputs.probabilities or request.segments),
        uncertainty=request.uncertainty_method if request.uncertainty else None,
        batch=request.batch,
        input_size=metadata.input_size,
        class_scale=(
            class_scale(metadata.decision["bias"])
            if metadata.decision and not request.argmax
            else None
        ),
    )
    mask = current_mask()
    n_outputs = 1 + (1 if request.uncertainty else 0)
    if settings.probabilities or settings.uncertainty:
        n_outputs += 2 * len(values)
    n_read = len(bands) + (1 if mask else 0)
    block_cols = block_width(
        request, block_size, grid, margin, n_read, n_outputs, region["cols"]
    )
    tile_size = tile_size_for_memory(
        request.tile_size,
        margin,
        min(block_cols + 2 * margin, region["cols"]),
        n_read,
        n_outputs,
        request.memory_mb,
        multiple,
    )
    gs.verbose(_("Tiles of {} cells").format(tile_size))
    blocks = block_grid(region["rows"], region["cols"], block_size, margin, block_cols)
    gisenv = gs.gisenv()
    identity = job_identity(
        request, region, bands, mask, settings, engine.name, (block_size, block_cols)
    )
    base = temporary_name(identity)

    def shared(name, cell_type, nbytes=4):
        return SharedRaster(
            mapset_folder(), name, cell_type, region["rows"], region["cols"], nbytes
        )

    job = BlockJob(
        id=identity,
        gisbase=os.environ["GISBASE"],
        gisdbase=gisenv["GISDBASE"],
        location=gisenv["LOCATION_NAME"],
        mapset=gisenv["MAPSET"],
        region=dict(region),
        bands=tuple(readable),
        mask=mask,
        bundle=os.path.abspath(request.bundle),
        engine=engine.name,
        precision=request.precision,
        threads=1,
        settings=settings,
        tile_size=tile_size,
        classes=shared(base, "CELL", cell_bytes(values)),
        probabilities=(
            tuple(shared("{}_p{}".format(base, k), "FCELL") for k in range(len(values)))
            if settings.probabilities
            else ()
        ),
        uncertainty=shared(base + "_u", "FCELL") if request.uncertainty else None,
        markers=markers_folder(identity),
    )
    return JobPlan(
        job=job,
        blocks=blocks,
        block_size=block_size,
        block_cols=block_cols,
        metadata=metadata,
        bands=bands,
        outputs=outputs,
        engine=engine,
    )


def block_width(request, block_size, grid, margin, n_read, n_outputs, region_cols):
    """Columns of the job's blocks: as asked, or as many as memory allows.

    GRASS reads a whole row of a map to give any part of it: a block as
    wide as the region reads each row once, a block of a tenth of its
    width ten times over. Blocks are widened to what a process's buffers
    (memory_mb) allow at the tile size asked for, up to the region.
    """
    if request.block_cols:
        return block_size_for(request.block_cols, grid, margin)
    tile = min(request.tile_size, block_size)
    widest = widest_block(tile, margin, n_read, n_outputs, request.memory_mb, grid)
    return min(max(block_size, widest), round_up(region_cols, grid))


def classify(request, temporary_maps):
    """Run a classification job from a request; return its JobResult.

    `temporary_maps` collects the temporary maps of the current mapset, for
    the caller to remove whatever happens (the job's own maps are kept
    after an interruption, for a rerun). The outputs exist under their
    final names only when everything succeeded.
    """
    started = time.perf_counter()
    try:
        job_plan = plan(request, temporary_maps)
    except Exception as error:
        # The bands resampled into the mapset may have filled its disk.
        full = disk_full(error, mapset_folder())
        if full is None:
            raise
        raise full from None
    planned = time.perf_counter() - started
    job = job_plan.job
    region = job.region
    gs.message(
        _(
            "Classifying {} x {} cells with <{}> in {} blocks of up to {} x {} "
            "cells (margin {} cells)"
        ).format(
            region["rows"],
            region["cols"],
            request.bundle,
            len(job_plan.blocks),
            job_plan.block_size,
            min(job_plan.block_cols, region["cols"]),
            job.settings.margin,
        )
    )
    if job.mask:
        # A MASK left from cutting training patches would silently blank
        # most of the map.
        gs.message(_("A MASK is active: the cells it masks are NULL in all outputs"))
    with OutputLock(request.output) as lock:
        result = run_job(job_plan, request, lock, temporary_maps)
    result.seconds["plan"] = planned
    gs.verbose(
        _(
            "Job steps: plan {plan:.2f} s, maps made or found {start:.2f} s, "
            "blocks {blocks:.1f} s, outputs finished {finish:.2f} s"
        ).format(**result.seconds)
    )
    return result


class Interruptions:
    """SIGINT and SIGTERM noted while a job runs (each then raises
    KeyboardInterrupt, as Python's own handler does); true once one came.

    Only the main thread may handle signals: elsewhere (a script's thread)
    nothing is noted and the handlers stay those already there.
    """

    def __init__(self):
        self.noted = []
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self.note)

    def note(self, signum, frame):
        self.noted.append(signum)
        raise KeyboardInterrupt

    def __bool__(self):
        return bool(self.noted)

    def forget(self):
        """The handlers back as they were."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def run_job(job_plan, request, lock, temporary_maps):
    """Classify the blocks not done yet and finish the outputs."""
    job = job_plan.job
    n_blocks = len(job_plan.blocks)
    seconds = {}
    clock = [time.perf_counter()]

    def step(name):
        now = time.perf_counter()
        seconds[name] = now - clock[0]
        clock[0] = now

    def on_fatal():
        # A GRASS fatal error in this process (a block read here, the
        # segments) ends it from C: clean up as on any failure (after an
        # interruption, as after one).
        remove_maps(temporary_maps)
        if interrupted:
            keep_for_resume(job, lock, n_blocks)
        else:
            end_job(job, lock)

    interrupted = Interruptions()
    on_grass_fatal(on_fatal)
    results = []
    try:
        done = start_job(job, lock)
        if done:
            gs.verbose(
                _("Resuming job {}: {} of {} blocks already classified").format(
                    job.id, len(done), n_blocks
                )
            )
        todo = [b for b in job_plan.blocks if b.index not in done]
        check_space(job, len(todo), n_blocks)
        step("start")
        if todo and (request.scheduler or request.nprocs > 1):
            results = run_on_dask(job_plan, todo, request)
        elif todo:
            results = run_in_process(job_plan, todo)
        step("blocks")
        results += block_results(job, sorted(done))
        result = finish_job(job_plan, request, results, temporary_maps)
    except KeyboardInterrupt:
        # Ctrl-C, SIGTERM: the finished blocks are kept for a rerun.
        keep_for_resume(job, lock, n_blocks)
        raise
    except BaseException as error:
        if interrupted:
            # Ctrl-C reached a GRASS module this run had started (the
            # terminal's process group) before this process: its error is
            # the interruption's, and the finished blocks are kept as well.
            keep_for_resume(job, lock, n_blocks)
            raise KeyboardInterrupt from error
        if isinstance(error, ClusterLost):
            keep_for_resume(job, lock, n_blocks)
            raise
        full = disk_full(error, job.mapset_folder)
        if full is None:
            # A failure: nothing of the job is left behind.
            end_job(job, lock)
            raise
        # A full disk: the finished blocks are kept for a rerun with space.
        keep_for_resume(job, lock, n_blocks)
        raise full from None
    finally:
        forget_grass_fatal(on_fatal)
        interrupted.forget()
    end_job(job, lock)
    step("finish")
    result.seconds = seconds
    ran = [r for r in results if r.index not in done]
    loads, peaks = {}, {}
    for r in ran:
        key = (r.worker, r.pid)
        loads[key] = max(loads.get(key, 0), r.engine_loads)
        peaks[key] = max(peaks.get(key, 0), r.peak_memory)
    result.blocks_resumed = len(done)
    result.processes = len(loads)
    result.engine_loads = sum(loads.values())
    result.peak_memory = max(peaks.values(), default=0)
    if ran:
        gs.verbose(
            _(
                "{} blocks classified by {} processes, which loaded the model {} "
                "times; peak memory of a process {:.0f} MB"
            ).format(
                len(ran),
                result.processes,
                result.engine_loads,
                result.peak_memory / 2**20,
            )
        )
        gs.verbose(
            _("Time in blocks {:.1f} s, of which the network {:.1f} s").format(
                sum(r.seconds for r in ran),
                sum(r.network_seconds for r in ran),
            )
        )
    return result


def combined_ranges(results, n_maps):
    """[low, high] of each output map over all blocks (None: all NULL)."""
    ranges = [None] * n_maps
    for r in results:
        for k, block_range in enumerate(r.ranges):
            if block_range is None:
                continue
            if ranges[k] is None:
                ranges[k] = list(block_range)
            else:
                ranges[k] = [
                    min(ranges[k][0], block_range[0]),
                    max(ranges[k][1], block_range[1]),
                ]
    return ranges


def decision_text(metadata, request):
    """Which decision rule makes the class map, in words."""
    if request.argmax and metadata.decision:
        return _(
            "argmax of the probabilities (-a: the bundle's rule {} not applied)"
        ).format(metadata.decision["rule"])
    return rule_description(None if request.argmax else metadata.decision)


def precision_text(job):
    """The precision the network ran in (auto resolved), and on which engine."""
    return "{} ({})".format(job.precision, job.engine)


def finish_job(job_plan, request, results, temporary_maps):
    """Ranges, the object map, metadata, and the outputs renamed."""
    job = job_plan.job
    cells = sum(r.cells for r in results)
    if cells == 0:
        raise IannError(
            _("No cell of the region has data in all bands <{}>").format(
                ",".join(job_plan.bands)
            )
        )
    maps = job.outputs()
    for raster, (low, high) in zip(
        maps,
        (r or (None, None) for r in combined_ranges(results, len(maps))),
    ):
        raster.write_range(low, high)
    final = job_plan.outputs
    temporary = OutputMaps(
        job.classes.name,
        [r.name for r in job.probabilities] if final.probabilities else [],
        job.uncertainty.name if job.uncertainty else None,
    )
    history = "i.ann.classify model={} input={}".format(
        os.path.abspath(request.bundle), ",".join(job_plan.bands)
    )
    if request.segments:
        history += " segments={}".format(request.segments)
        objects = temporary_map_name("objects")
        temporary_maps.append(objects)
        sums = segment_sums(
            [r.name for r in job.probabilities], request.segments, job.region["rows"]
        )
        write_segment_classes(
            objects,
            request.segments,
            sums,
            job.settings.values,
            job.region["rows"],
            job.settings.class_scale,
        )
        temporary.classes = objects
    renamed = finish(
        temporary,
        final,
        job_plan.metadata,
        history,
        request.uncertainty_method,
        description="Classes: {}; network in {}".format(
            decision_text(job_plan.metadata, request), precision_text(job)
        ),
    )
    for name in renamed:
        if name in temporary_maps:
            temporary_maps.remove(name)
    return JobResult(
        outputs=final,
        cells=cells,
        blocks=len(job_plan.blocks),
        blocks_resumed=0,
        processes=1,
        engine_loads=0,
    )
