"""What a classification job leaves on disk, and how a rerun finds it.

A job has an identity: a hash of everything that makes its maps (the
request, the region and MASK, the bundle's files and the bands' files).
Workers write each block into a mapset of their own named after the job,
with a done marker; a small record in the current mapset
(<mapset>/i.ann_jobs/<output>) names the job last started for an output,
so that a command for the same output that differs in anything removes
the earlier job's blocks, and the same command finds them and resumes.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace


import grass.script as gs

from .blocks import DONE_FOLDER
from .bundle import bundle_identity


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
