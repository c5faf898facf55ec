"""What a classification job leaves on disk, and how a rerun finds it.

A job has an identity: a hash of everything that makes its maps (the
request, the region and MASK, the bundle's files and the bands' files).
In the current mapset it has:

- its output maps under temporary names, `tmp_iann_<job>` (classes),
  `tmp_iann_<job>_p<k>` (probabilities), `tmp_iann_<job>_u` (uncertainty),
  written in place by the blocks (grass/shared_raster.py) and renamed to the
  names asked for once every block is done;
- a marker for each block written, `i.ann_jobs/blocks_<job>/<block>.json`;
- a record, `i.ann_jobs/<output>`, naming the job last started for an
  output, locked while a run works on it: a command for the same output
  that differs in anything removes the earlier job's maps, the same
  command finds them and resumes, and a second run for an output that
  another run is classifying stops at once.
"""

import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket

import grass.script as gs

from iann.errors import DiskFull, IannError
from iann.formats.bundle import METADATA_FILE, MODEL_FILE, ONNX_FILE, bundle_identity
from iann.grass.disk import free_space, mapset_folder, size_text
from iann.grass.rasters import remove_maps
from iann.jobs.block import MARKER_SUFFIX, read_marker

JOBS_FOLDER = "i.ann_jobs"
TEMPORARY_PREFIX = "tmp_iann_"


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
    files = [METADATA_FILE, MODEL_FILE]
    if engine != "keras":
        files.append(ONNX_FILE)
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
        "class_scale": settings.class_scale,
        "engine": engine,
        "precision": request.precision,
        "block_size": block_size,
        "output": request.output,
    }
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def temporary_name(job_id):
    """The name of a job's class map until it is done (the others add _p<k>, _u)."""
    return TEMPORARY_PREFIX + job_id


def markers_folder(job_id):
    return os.path.join(mapset_folder(), JOBS_FOLDER, "blocks_" + job_id)


def finished_blocks(job):
    """Indices of the blocks already written by this job."""
    try:
        names = os.listdir(job.markers)
    except FileNotFoundError:
        return set()
    return {
        int(name[: -len(MARKER_SUFFIX)])
        for name in names
        if name.endswith(MARKER_SUFFIX) and name[: -len(MARKER_SUFFIX)].isdigit()
    }


def block_results(job, indices):
    """The BlockResults kept in the markers of blocks `indices`."""
    from iann.jobs.block import marker_path

    return [read_marker(marker_path(job, index)) for index in indices]


def job_maps(job_id):
    """The maps of job `job_id` that exist in the current mapset."""
    folder = os.path.join(mapset_folder(), "cellhd")
    base = temporary_name(job_id)
    pattern = re.compile(re.escape(base) + r"(_p\d+|_u)?")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if pattern.fullmatch(name))


def remove_job(job_id):
    """Remove a job's maps and markers."""
    remove_maps(job_maps(job_id))
    shutil.rmtree(markers_folder(job_id), ignore_errors=True)


class OutputLock:
    """The record of the job classifying an output, locked while it runs.

    An advisory lock (flock) on `i.ann_jobs/<output>` in the mapset (so
    machines sharing the GRASS database see it): it ends with the process,
    also when the process is killed, and a later run takes it over. The
    record names the job and the run that holds it (host, PID, start).
    """

    def __init__(self, output):
        self.output = output
        self.path = os.path.join(mapset_folder(), JOBS_FOLDER, output)
        self.file = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.read()
            self.file.close()
            raise IannError(
                _(
                    "Another run of i.ann.classify is classifying <{}> in this "
                    "mapset (job {}, process {} on {}, started {}); wait for it "
                    "to end, or stop it and run this command again"
                ).format(
                    self.output,
                    holder.get("job") or "?",
                    holder.get("pid") or "?",
                    holder.get("host") or "?",
                    holder.get("started") or "?",
                )
            ) from None
        return self

    def read(self):
        self.file.seek(0)
        text = self.file.read().strip()
        try:
            record = json.loads(text)
        except ValueError:
            record = {"job": text}  # the job id alone, as written before JSON
        return record if isinstance(record, dict) else {}

    def earlier_job(self):
        job = self.read().get("job", "")
        return job if re.fullmatch("[0-9a-f]{12}", str(job)) else None

    def record(self, job_id):
        record = {
            "job": job_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps(record))
        self.file.flush()

    def forget(self):
        """Remove the record (the lock ends when the file is closed)."""
        try:
            os.remove(self.path)
        except OSError:
            pass
        try:
            os.rmdir(os.path.dirname(self.path))
        except OSError:
            pass

    def __exit__(self, *exc):
        self.file.close()


def start_job(job, lock):
    """Record the job of an output and prepare its maps; the blocks done.

    The same command run again after an interruption resumes its job; a
    command for the same output with other bands, region, MASK, bundle or
    settings is another job, whose maps the earlier job's cannot be: they
    are removed, and the new job starts afresh.
    """
    earlier = lock.earlier_job()
    if (
        earlier
        and earlier != job.id
        and (job_maps(earlier) or os.path.isdir(markers_folder(earlier)))
    ):
        remove_job(earlier)
        gs.message(
            _(
                "The maps of an unfinished earlier run for <{}> were removed: "
                "its bands, region, MASK, model or settings were other than "
                "these; classifying afresh"
            ).format(lock.output)
        )
    lock.record(job.id)
    if not all(raster.is_complete() for raster in job.outputs()):
        # Never begun, or begun and cut before its maps were whole.
        remove_job(job.id)
        for raster in job.outputs():
            raster.create()
    os.makedirs(job.markers, exist_ok=True)
    return finished_blocks(job)


def check_space(job, todo, total):
    """Clear error when the disk cannot hold the cells still to be written."""
    needed = sum(sum(raster.file_sizes()) for raster in job.outputs())
    needed = needed * todo // max(1, total)
    free = free_space(job.mapset_folder)
    if needed > free:
        # Said in full by grass.disk.disk_full, with the filesystem.
        raise DiskFull(_("the maps of this job need {} more").format(size_text(needed)))


def end_job(job, lock):
    """Remove what is left of the job (its markers, maps not renamed) and its record."""
    remove_job(job.id)
    lock.forget()


def keep_for_resume(job, lock, n_blocks):
    """After an interruption: keep the blocks done for a rerun, and say so."""
    done = finished_blocks(job)
    if len(done) == n_blocks:
        gs.warning(
            _(
                "All {} blocks are kept in the maps {}* of this mapset; run the "
                "same command again to finish the maps"
            ).format(n_blocks, temporary_name(job.id))
        )
    elif done:
        gs.warning(
            _(
                "{} of {} blocks are kept in the maps {}* of this mapset; run "
                "the same command again to classify only the others"
            ).format(len(done), n_blocks, temporary_name(job.id))
        )
    else:
        end_job(job, lock)
