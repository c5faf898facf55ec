"""A classification job: one plan of blocks, run anywhere, merged once.

The region is cut into a deterministic grid of blocks (tiling.py). One
process, N local processes (a Dask LocalCluster) or a Dask cluster all
classify the blocks through blocks.run_block, each block into maps of a
mapset of its worker. The blocks are then put together with r.buildvrt and
written once, in the current mapset, under temporary names that are
finished and renamed to the outputs (outputs.py).

The job has an identity (a hash of everything that makes its maps, the
bundle's and the bands' content included): run the same command again
after an interruption and the blocks already written are kept, only the
missing ones are classified; a command for the same output that differs
in anything is another job, and removes the earlier one's blocks. The
job's mapsets are removed once every block is done, and when the job
fails: only an interruption keeps them.
"""

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field


import grass.script as gs

from .blocks import BlockJob, forget_grass_fatal, on_grass_fatal
from .bundle import check_model_file, read_bundle_metadata
from .reading import resampled_bands
from .engines import choose_engine, usable_precision
from .errors import IannError
from .normalise import bundle_transform
from .outputs import OutputMaps, finish, segment_sums, write_segment_classes
from .pipeline import PredictionSettings
from .tiling import block_grid, block_size_for, tile_size_for_memory
from .job_runs import run_in_process, run_on_dask
from .job_checks import check_request, check_resolution, image_statistics
from .job_store import (
    current_mask,
    end_job,
    finished_blocks,
    job_identity,
    keep_for_resume,
    remove_maps,
    start_job_record,
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
    memory_mb: int = 1024
    batch: int = 1
    nprocs: int = 1
    scheduler: str = None
    gpu: bool = False
    overwrite: bool = False


@dataclass
class JobPlan:
    """A job ready to run: its blocks, the engine, the maps it makes."""

    job: BlockJob
    blocks: list
    block_size: int
    metadata: dict
    bands: list
    outputs: OutputMaps
    engine: object
    workers: int = 1
    done: dict = field(default_factory=dict)


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


def plan(request, temporary_maps):
    """Check the request and cut the region into the job's blocks."""
    metadata = read_bundle_metadata(request.bundle)
    check_model_file(request.bundle)
    bands, outputs = check_request(request, metadata)
    request.precision, problem = usable_precision(request.precision, request.gpu)
    if problem:
        gs.warning(problem)
    engine = choose_engine(
        request.bundle, metadata, request.engine, request.precision, request.gpu
    )
    if engine.warning:
        gs.warning(engine.warning)
    mean, std = bundle_transform(metadata)
    if request.normalize_image:
        mean, std = image_statistics(bands)
        gs.verbose(_("Band statistics recomputed on the input"))
    method = metadata.get("dataset", {}).get("sampling", {}).get("resample")
    readable, _records = resampled_bands(bands, method or "bilinear", temporary_maps)
    # Blocks are written from other mapsets, whose search path does not
    # hold this one: every map is named with its mapset.
    readable = [gs.find_file(name, element="cell")["fullname"] for name in readable]
    region = gs.region()
    check_resolution(metadata, region, request.bundle)
    margin = int(metadata["margin"])
    multiple = int(metadata.get("size_multiple", 1))
    block_size = block_size_for(request.block_size, multiple, margin)
    if block_size != request.block_size:
        gs.verbose(
            _(
                "block_size {} rounded to {} (a multiple of the network's {} cells, "
                "at least the margin of {} cells)"
            ).format(request.block_size, block_size, multiple, margin)
        )
    values = tuple(c["value"] for c in metadata["classes"])
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
    )
    mask = current_mask()
    n_outputs = 1 + (1 if request.uncertainty else 0)
    if settings.probabilities or settings.uncertainty:
        n_outputs += 2 * len(values)
    tile_size = tile_size_for_memory(
        request.tile_size,
        margin,
        min(block_size + 2 * margin, region["cols"]),
        len(bands) + (1 if mask else 0),
        n_outputs,
        request.memory_mb,
        multiple,
    )
    gs.verbose(_("Tiles of {} cells").format(tile_size))
    blocks = block_grid(region["rows"], region["cols"], block_size, margin)
    gisenv = gs.gisenv()
    identity = job_identity(
        request, region, bands, mask, settings, engine.name, block_size
    )
    job = BlockJob(
        id=identity,
        gisbase=os.environ["GISBASE"],
        gisdbase=gisenv["GISDBASE"],
        location=gisenv["LOCATION_NAME"],
        region=dict(region),
        bands=tuple(readable),
        mask=mask,
        bundle=os.path.abspath(request.bundle),
        engine=engine.name,
        precision=request.precision,
        threads=1,
        settings=settings,
        tile_size=tile_size,
        n_classes=len(values),
        uncertainty=bool(request.uncertainty),
    )
    return JobPlan(
        job=job,
        blocks=blocks,
        block_size=block_size,
        metadata=metadata,
        bands=bands,
        outputs=outputs,
        engine=engine,
    )


def merge_blocks(job, done, indices, temporary, temporary_maps):
    """The blocks' maps put together into the temporary outputs (r.buildvrt)."""
    kinds = [(temporary.classes, lambda names: names[0])]
    for k, name in enumerate(temporary.probabilities):
        kinds.append((name, lambda names, k=k: names[1][k]))
    if temporary.uncertainty:
        kinds.append((temporary.uncertainty, lambda names: names[2]))
    folder = tempfile.mkdtemp(prefix="i.ann-merge-")
    try:
        for output, pick in kinds:
            sources = [
                "{}@{}".format(pick(job.map_names(index)), done[index])
                for index in indices
            ]
            if len(sources) == 1:
                # r.buildvrt wants two maps at least.
                gs.mapcalc(
                    "{} = {}".format(output, sources[0]), quiet=True, overwrite=True
                )
                continue
            listing = os.path.join(folder, "maps.txt")
            with open(listing, "w") as f:
                f.write("".join(source + "\n" for source in sources))
            virtual = output + "_vrt"
            temporary_maps.append(virtual)
            gs.run_command(
                "r.buildvrt", file=listing, output=virtual, quiet=True, overwrite=True
            )
            gs.mapcalc("{} = {}".format(output, virtual), quiet=True, overwrite=True)
            gs.run_command(
                "g.remove", type="raster", name=virtual, flags="f", quiet=True
            )
            temporary_maps.remove(virtual)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def classify(request, temporary_maps):
    """Run a classification job from a request; return its JobResult.

    `temporary_maps` collects the temporary maps of the current mapset, for
    the caller to remove whatever happens. The outputs exist under their
    final names only when everything succeeded.
    """
    plan_ = plan(request, temporary_maps)
    job = plan_.job
    region = job.region
    gs.message(
        _(
            "Classifying {} x {} cells with <{}> in {} blocks of up to {} cells "
            "(margin {} cells)"
        ).format(
            region["rows"],
            region["cols"],
            request.bundle,
            len(plan_.blocks),
            plan_.block_size,
            job.settings.margin,
        )
    )
    start_job_record(job, request.output)
    done = finished_blocks(job)
    if done:
        gs.verbose(
            _("Resuming job {}: {} of {} blocks already classified").format(
                job.id, len(done), len(plan_.blocks)
            )
        )
    todo = [b for b in plan_.blocks if b.index not in done]
    distributed = request.scheduler or request.nprocs > 1
    results = []

    def on_fatal():
        # A GRASS fatal error in this process (a block read here, the
        # merge, the segments) ends it from C: clean up as on any failure.
        remove_maps(temporary_maps)
        end_job(job, request.output)

    on_grass_fatal(on_fatal)
    try:
        if todo and distributed:
            results = run_on_dask(plan_, todo, request)
        elif todo:
            results = run_in_process(plan_, todo)
        done.update({r.index: r.mapset for r in results})
        result = finish_job(plan_, request, done, temporary_maps)
    except KeyboardInterrupt:
        # Ctrl-C, SIGTERM: the finished blocks are kept for a rerun.
        keep_for_resume(job, len(plan_.blocks))
        raise
    except BaseException:
        # A failure: nothing of the job is left behind.
        end_job(job, request.output)
        raise
    finally:
        forget_grass_fatal(on_fatal)
    end_job(job, request.output)
    loads, peaks = {}, {}
    for r in results:
        key = (r.worker, r.pid)
        loads[key] = max(loads.get(key, 0), r.engine_loads)
        peaks[key] = max(peaks.get(key, 0), r.peak_memory)
    result.blocks_resumed = len(plan_.blocks) - len(todo)
    result.processes = len(loads)
    result.engine_loads = sum(loads.values())
    result.peak_memory = max(peaks.values(), default=0)
    if results:
        gs.verbose(
            _(
                "{} blocks classified by {} processes, which loaded the model {} "
                "times; peak memory of a process {:.0f} MB"
            ).format(
                len(results),
                result.processes,
                result.engine_loads,
                result.peak_memory / 2**20,
            )
        )
        gs.verbose(
            _("Time in blocks {:.1f} s, of which the network {:.1f} s").format(
                sum(r.seconds for r in results),
                sum(r.network_seconds for r in results),
            )
        )
    return result


def finish_job(plan_, request, done, temporary_maps):
    """Merge the blocks, make the object map, finish and rename the outputs."""
    job = plan_.job
    base = gs.append_node_pid("tmp_iann_classify")
    keep_probabilities = job.settings.probabilities
    merged = OutputMaps(
        base,
        (
            ["{}_p{}".format(base, k) for k in range(job.n_classes)]
            if keep_probabilities
            else []
        ),
        base + "_u" if job.uncertainty else None,
    )
    temporary_maps.extend(n for n in merged.names() if n)
    indices = [b.index for b in plan_.blocks]
    started = time.perf_counter()
    merge_blocks(job, done, indices, merged, temporary_maps)
    gs.verbose(
        _("Blocks merged into the outputs in {:.1f} s").format(
            time.perf_counter() - started
        )
    )
    cells = int(gs.parse_command("r.univar", map=merged.classes, flags="g")["n"])
    if cells == 0:
        raise IannError(
            _("No cell of the region has data in all bands <{}>").format(
                ",".join(plan_.bands)
            )
        )
    final = plan_.outputs
    temporary = OutputMaps(
        merged.classes,
        merged.probabilities if final.probabilities else [],
        merged.uncertainty,
    )
    history = "i.ann.classify model={} input={}".format(
        os.path.abspath(request.bundle), ",".join(plan_.bands)
    )
    if request.segments:
        history += " segments={}".format(request.segments)
        objects = base + "_objects"
        temporary_maps.append(objects)
        sums = segment_sums(merged.probabilities, request.segments, job.region["rows"])
        write_segment_classes(
            objects, request.segments, sums, job.settings.values, job.region["rows"]
        )
        temporary.classes = objects
    renamed = finish(
        temporary, final, plan_.metadata, history, request.uncertainty_method
    )
    for name in renamed:
        temporary_maps.remove(name)
    return JobResult(
        outputs=final,
        cells=cells,
        blocks=len(plan_.blocks),
        blocks_resumed=0,
        processes=1,
        engine_loads=0,
    )
