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

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

import grass.script as gs

from .blocks import (
    DONE_FOLDER,
    BlockJob,
    forget_grass_fatal,
    on_grass_fatal,
    run_block,
)
from .bundle import (
    RESOLUTION_FACTOR,
    bundle_identity,
    cell_size_metres,
    check_model_file,
    read_bundle_metadata,
    training_cell_size,
)
from .cluster import DaskCluster, cores_available
from .reading import resampled_bands
from .engines import choose_engine, usable_precision
from .errors import IannError
from .grassio import check_new_raster, require_rasters
from .normalise import bundle_transform
from .outputs import OutputMaps, finish, segment_sums, write_segment_classes
from .pipeline import PredictionSettings
from .tiling import block_grid, block_size_for, tile_size_for_memory, workers_for


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


def image_statistics(bands):
    """Mean and standard deviation of each band over the region (r.univar)."""
    means, stds = [], []
    for name in bands:
        stats = gs.parse_command("r.univar", map=name, flags="g")
        if int(stats.get("n", 0)) == 0:
            raise IannError(_("Raster map <{}> has no data in the region").format(name))
        means.append(float(stats["mean"]))
        stds.append(float(stats["stddev"]) or 1.0)
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def check_request(request, metadata):
    """Clear errors for bad input, before anything is computed or written."""
    bands = require_rasters(request.bands)
    if len(bands) != len(metadata["bands"]):
        raise IannError(
            _("Model <{}> was trained on {} bands ({}), {} were given").format(
                request.bundle,
                len(metadata["bands"]),
                ",".join(b["name"] for b in metadata["bands"]),
                len(bands),
            )
        )
    check_band_order(bands, metadata)
    if request.segments:
        require_rasters([request.segments])
    values = [c["value"] for c in metadata["classes"]]
    outputs = OutputMaps.requested(
        request.output, request.probabilities, request.uncertainty, values
    )
    for name in outputs.names():
        check_new_raster(name, request.overwrite)
    return bands, outputs


def check_band_order(bands, metadata):
    """Warn when the bands are the model's, by name, in another order.

    The network takes the bands by position: the model's first band is
    whatever map comes first.
    """
    given = [name.split("@", 1)[0] for name in bands]
    trained = [b["name"].split("@", 1)[0] for b in metadata["bands"]]
    if given != trained and sorted(given) == sorted(trained):
        gs.warning(
            _(
                "The bands <{}> are those the model was trained on in another "
                "order (<{}>): the network takes them by position; give them in "
                "the model's order unless they are other images of the same names"
            ).format(",".join(given), ",".join(trained))
        )


def region_cell_size(region):
    """Cell size in metres of the region (see bundle.cell_size_metres)."""
    if gs.locn_is_latlong():
        units = "degrees"
    else:
        units = float(gs.parse_command("g.proj", flags="g").get("meters", 1.0))
    return cell_size_metres(
        region["nsres"], region["ewres"], units, (region["n"] + region["s"]) / 2
    )


def check_resolution(metadata, region, bundle):
    """Warn when the region's cells are much larger or smaller than in training.

    The network learnt objects at the scale of its training cells: a
    region of 2 m cells for a model trained at 28.5 m is classified
    without error, and badly. Cell sizes are compared in metres, so that
    a latitude-longitude project is measured as such.
    """
    trained = training_cell_size(metadata)
    if not trained:
        return
    here = region_cell_size(region)
    factor = max(here / trained, trained / here)
    if factor > RESOLUTION_FACTOR:
        gs.warning(
            _(
                "The region's cells ({:.3g} m) are {:.1f} times {} than those model "
                "<{}> was trained on ({:.3g} m): the network sees objects at "
                "another scale than it learnt; set the region's resolution near "
                "the training one (g.region res=) or train at this one"
            ).format(
                here,
                factor,
                _("smaller") if here < trained else _("larger"),
                bundle,
                trained,
            )
        )


def raster_stamp(fullname):
    """Size and modification time of a raster map's files: its content, cheaply.

    A map written again under the same name (r.mapcalc --overwrite,
    r.mask) gets files of another time.
    """
    if not fullname:
        return None
    name, mapset = fullname.split("@", 1)
    env = gs.gisenv()
    folder = os.path.join(env["GISDBASE"], env["LOCATION_NAME"], mapset)
    paths = [os.path.join(e, name) for e in ("cellhd", "cell", "fcell")]
    misc = os.path.join("cell_misc", name)
    if os.path.isdir(os.path.join(folder, misc)):
        paths += [
            os.path.join(misc, f)
            for f in sorted(os.listdir(os.path.join(folder, misc)))
        ]
    stamp = []
    for path in paths:
        try:
            info = os.stat(os.path.join(folder, path))
        except OSError:
            continue
        stamp.append((path, info.st_size, info.st_mtime_ns))
    return stamp


def job_identity(request, region, bands, mask, settings, engine, block_size):
    """A hash of everything that makes the job's maps (resume key).

    The region, the bands and the MASK (names and files), the bundle (the
    SHA-256 of metadata.json, model.keras and, when it runs, model.onnx:
    another bundle copied to the same folder is another job) and the
    settings. A rerun with any of them changed is a new job.
    """
    files = ["metadata.json", "model.keras"]
    if engine != "keras":
        files.append("model.onnx")
    key = {
        "region": {k: region[k] for k in ("n", "s", "e", "w", "nsres", "ewres")},
        "bands": [(name, raster_stamp(name)) for name in bands],
        "mask": (mask, raster_stamp(mask)),
        "bundle": os.path.abspath(request.bundle),
        "bundle_files": bundle_identity(request.bundle, files),
        "mean": settings.mean.tolist(),
        "std": settings.std.tolist(),
        "values": list(settings.values),
        "augment": settings.augment,
        "probabilities": settings.probabilities,
        "uncertainty": settings.uncertainty,
        "engine": engine,
        "precision": request.precision,
        "block_size": block_size,
        "output": request.output,
    }
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def current_mask():
    """The current mapset's MASK as a full map name, or None."""
    env = gs.gisenv()
    found = gs.find_file("MASK", element="cell", mapset=env["MAPSET"])
    return found["fullname"] or None


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


def job_mapsets(job):
    """The mapsets that hold the job's blocks (one per worker)."""
    location = os.path.join(job.gisdbase, job.location)
    prefix = "iann_{}_".format(job.id)
    return sorted(name for name in os.listdir(location) if name.startswith(prefix))


def finished_blocks(job):
    """{block index: mapset} of the blocks already written by this job."""
    done = {}
    for mapset in job_mapsets(job):
        folder = os.path.join(job.gisdbase, job.location, mapset, DONE_FOLDER)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name.isdigit():
                done.setdefault(int(name), mapset)
    return done


def remove_job_mapsets(job):
    for mapset in job_mapsets(job):
        shutil.rmtree(
            os.path.join(job.gisdbase, job.location, mapset), ignore_errors=True
        )


class Progress:
    """gs.percent, called only when the whole percentage changes."""

    def __init__(self, total):
        self.total = max(1, total)
        self.shown = -1

    def __call__(self, done):
        percent = int(100 * done / self.total)
        if percent != self.shown:
            self.shown = percent
            gs.percent(done, self.total, 1)


def run_in_process(plan, todo):
    """Classify the blocks one after the other in this process."""
    job = replace(plan.job, threads=cores_available())
    plan.job = job
    gs.message(_("Engine: {}").format(plan.engine.describe(job.threads)))
    rows_of = [-(-b.core.rows // job.tile_size) for b in todo]
    progress = Progress(sum(rows_of))
    results = []
    for block, before in zip(todo, np.cumsum([0] + rows_of[:-1])):
        results.append(
            run_block(job, block, lambda done, _n, b=before: progress(b + done))
        )
    return results


@contextmanager
def workers_ignore_interrupts():
    """Processes started inside ignore Ctrl-C (SIGINT); this one keeps it.

    A terminal sends Ctrl-C to the whole process group: the worker
    processes of a LocalCluster would each print a KeyboardInterrupt
    traceback. Started while SIGINT is ignored, they inherit that (across
    exec, and Python then leaves it so), and end when this process, which
    handles the interrupt, closes the cluster. A Ctrl-C during these few
    seconds of start-up is lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_on_dask(plan, todo, request):
    """Classify the blocks on a Dask LocalCluster or an existing cluster."""
    workers = workers_for(request.nprocs, len(todo))
    if not request.scheduler and workers < request.nprocs:
        gs.message(
            _("{} blocks to classify: {} processes instead of {}").format(
                len(todo), workers, request.nprocs
            )
        )
    threads = max(1, cores_available() // workers)
    results = []
    with ExitStack() as stack:
        with workers_ignore_interrupts():
            cluster = stack.enter_context(
                DaskCluster(workers, request.scheduler, threads)
            )
        job = replace(plan.job, threads=cluster.threads_per_worker())
        plan.job = job
        cluster.check_workers(job)
        plan.workers = len(cluster.workers())
        where = (
            _("on the Dask cluster <{}> ({} workers)").format(
                request.scheduler, plan.workers
            )
            if request.scheduler
            else _("in {} processes").format(plan.workers)
        )
        gs.message(_("Classifying {} blocks {}").format(len(todo), where))
        gs.message(_("Engine: {}").format(plan.engine.describe(job.threads)))
        progress = Progress(len(todo))

        def on_done(result):
            results.append(result)
            progress(len(results))

        cluster.run(job, todo, request.gpu, on_done)
    return results


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


JOBS_FOLDER = "i.ann_jobs"


def job_record(output):
    """The file of the current mapset that names the job of an output map."""
    env = gs.gisenv()
    return os.path.join(
        env["GISDBASE"], env["LOCATION_NAME"], env["MAPSET"], JOBS_FOLDER, output
    )


def start_job_record(job, output):
    """Record the job of `output`; remove an earlier unfinished job of it.

    The same command run again after an interruption resumes its job; a
    command for the same output with other bands, region, MASK, bundle or
    settings is another job, whose blocks the earlier job's cannot be:
    they are removed, and the new job starts afresh.
    """
    path = job_record(output)
    try:
        with open(path) as f:
            earlier = f.read().strip()
    except OSError:
        earlier = None
    if earlier and earlier != job.id and re.fullmatch("[0-9a-f]{12}", earlier):
        stale = replace(job, id=earlier)
        if job_mapsets(stale):
            remove_job_mapsets(stale)
            gs.message(
                _(
                    "The blocks of an unfinished earlier run for <{}> were removed: "
                    "its bands, region, MASK, model or settings were other than "
                    "these; classifying afresh"
                ).format(output)
            )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(job.id)


def end_job(job, output):
    """Remove the job's mapsets and its record (finished or failed)."""
    remove_job_mapsets(job)
    path = job_record(output)
    try:
        os.remove(path)
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass


def remove_maps(names):
    """Remove raster maps of the current mapset (temporary ones), quietly."""
    for name in [n for n in names if n]:
        gs.run_command(
            "g.remove",
            type="raster",
            name=name,
            flags="f",
            quiet=True,
            errors="ignore",
            stderr=subprocess.DEVNULL,
        )


def keep_for_resume(job, n_blocks):
    """After an interruption: say what is kept; remove mapsets with nothing done."""
    done = finished_blocks(job)
    for mapset in job_mapsets(job):
        if mapset not in done.values():
            shutil.rmtree(
                os.path.join(job.gisdbase, job.location, mapset), ignore_errors=True
            )
    if done:
        gs.warning(
            _(
                "{} of {} blocks are kept in the mapsets {}* of this project; run "
                "the same command again to classify only the others"
            ).format(len(done), n_blocks, job.mapset_for(""))
        )


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
