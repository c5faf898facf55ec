"""Running a job's blocks: in this process, or on Dask workers.

Both run the same block.run_block; a Dask run starts a LocalCluster of
`nprocs` workers or joins the cluster at `scheduler`, and gives each block
a GPU resource with -g.
"""

import os
import signal
import sys
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import numpy as np

import grass.script as gs

from iann.jobs.block import run_block
from iann.jobs.cluster import DaskCluster, cores_available
from iann.predict.tiling import workers_for


class Progress:
    """GRASS's percentage (G_percent), printed when its whole value changes.

    Called through the raster library this process has loaded, not as
    gs.percent (a g.message process each time: 100 of them cost seconds).
    """

    def __init__(self, total):
        from iann.grass.rasters import grass_libraries

        self.percent = grass_libraries()[0].G_percent
        self.total = max(1, total)
        self.shown = -1

    def __call__(self, done):
        percent = int(100 * done / self.total)
        if percent != self.shown:
            self.shown = percent
            self.percent(done, self.total, 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # G_percent ends its line at 100% only: a message after a run cut
        # short (an error, Ctrl-C) starts on a line of its own.
        printed = os.environ.get("GRASS_MESSAGE_FORMAT", "standard") in (
            "standard",
            "plain",
        )
        quiet = int(os.environ.get("GRASS_VERBOSE", "2")) < 1
        if printed and not quiet and 0 <= self.shown < 100:
            sys.stderr.write("\n")
            sys.stderr.flush()


def run_in_process(plan, todo):
    """Classify the blocks one after the other in this process."""
    job = replace(plan.job, threads=cores_available())
    gs.message(_("Engine: {}").format(plan.engine.describe(job.threads)))
    rows_of = [-(-b.core.rows // job.tile_size) for b in todo]
    results = []
    with Progress(sum(rows_of)) as progress:
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
        cluster.check_workers(plan.job)
        job = replace(plan.job, threads=cluster.threads_per_worker())
        n_workers = len(cluster.workers())
        where = (
            _("on the Dask cluster <{}> ({} workers)").format(
                request.scheduler, n_workers
            )
            if request.scheduler
            else _("in {} processes").format(n_workers)
        )
        gs.message(_("Classifying {} blocks {}").format(len(todo), where))
        gs.message(_("Engine: {}").format(plan.engine.describe(job.threads)))
        progress = stack.enter_context(Progress(len(todo)))

        def on_done(result):
            results.append(result)
            progress(len(results))

        cluster.run(job, todo, request.gpu, on_done)
    return results
