"""Dask distributed runs the blocks of a job in many processes.

`nprocs=N` starts a LocalCluster of N single-threaded worker processes on
this machine (nothing to set up); `scheduler=ADDRESS` sends the blocks to
an existing Dask cluster (`dask scheduler` and `dask worker`, dask-jobqueue
on SLURM or PBS, Kubernetes). Dask schedules, balances and reschedules the
blocks of a lost worker; i.ann only says what a block is (jobs/block.py).

An existing cluster is sent the library itself (Dask's upload_file, to
the scheduler, which unpickles the blocks' tasks, and to every worker,
also those that join later), so that plain `dask scheduler` and `dask
worker` commands serve; GRASS's own Python is found from the job's GISBASE
(block.prepare_grass).
"""

import importlib.util
import io
import logging
import os
import shutil
import tempfile
import zipfile
from collections import Counter

from iann.errors import ClusterLost, IannError
from iann.jobs.block import run_block, visibility_problem

# Seconds to reach a scheduler, and to wait for its first worker.
CONNECT_TIMEOUT = 10
WORKER_TIMEOUT = 60


def library_zip():
    """The library's Python files as a zip archive, the same bytes for the
    same files (upload_file puts it on the workers' sys.path)."""
    import iann

    root = os.path.dirname(os.path.dirname(os.path.abspath(iann.__file__)))
    package = os.path.join(root, "iann")
    paths = sorted(
        os.path.join(folder, name)
        for folder, _folders, names in os.walk(package)
        for name in names
        if name.endswith(".py")
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            info = zipfile.ZipInfo(os.path.relpath(path, root), (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                archive.writestr(info, f.read())
    return buffer.getvalue()


def cores_available():
    """Cores this process may use (its CPU affinity: cgroups, taskset, SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_environment(threads):
    """Environment that limits the numerical libraries of a worker process."""
    value = str(threads)
    return {
        "TF_NUM_INTRAOP_THREADS": value,
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": value,
        "OPENBLAS_NUM_THREADS": value,
        "MKL_NUM_THREADS": value,
    }


class DaskCluster:
    """A Dask client on a LocalCluster or on an existing scheduler.

    Used as a context manager: a LocalCluster and its worker processes are
    stopped at the end, whatever happens; an existing cluster is left
    running.
    """

    def __init__(self, nprocs=1, scheduler=None, threads=1):
        self.nprocs = nprocs
        self.scheduler = scheduler
        self.threads = threads
        self.cluster = None
        self.client = None
        self.upload_folder = None

    def __enter__(self):
        # When the module is interrupted (Ctrl-C, SIGTERM) while it waits on
        # Dask, distributed's cancel callback can fail in its event loop and
        # tornado logs that with a traceback; the interruption itself is
        # reported by the module. When the scheduler dies, the client logs
        # each failed reconnection with a traceback; the lost connection is
        # reported by the module too. Real failures come back through the
        # blocks' futures, not through these logs. (Imported first: importing
        # distributed sets the levels of its loggers.)
        import distributed  # noqa: F401

        self.logs = {
            name: logging.getLogger(name).level
            for name in ("tornado.application", "distributed.client")
        }
        for name in self.logs:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            self._connect()
        except BaseException:
            self.restore_logs()
            raise
        return self

    def restore_logs(self):
        for name, level in self.logs.items():
            logging.getLogger(name).setLevel(level)

    def _connect(self):
        from distributed import Client, LocalCluster

        if self.scheduler:
            try:
                self.client = Client(
                    self.scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False
                )
            except (OSError, TimeoutError) as error:
                raise IannError(
                    _("Cannot reach the Dask scheduler <{}>: {}").format(
                        self.scheduler, error
                    )
                ) from None
            try:
                self.client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
            except TimeoutError:
                self.client.close()
                raise IannError(
                    _("No Dask worker joined the scheduler <{}> in {} s").format(
                        self.scheduler, WORKER_TIMEOUT
                    )
                ) from None
            self.send_library()
            return
        self.cluster = LocalCluster(
            n_workers=self.nprocs,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # A block's failure comes back through its future and is
            # reported once by the module, not also as the worker's log.
            silence_logs=logging.CRITICAL,
            env=thread_environment(self.threads),
        )
        self.client = Client(self.cluster, set_as_default=False)

    def __exit__(self, *exc):
        try:
            if self.client is not None:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        finally:
            self.restore_logs()
            if self.upload_folder:
                shutil.rmtree(self.upload_folder, ignore_errors=True)

    def send_library(self):
        """The library to the scheduler and the workers, as a zip file."""
        self.upload_folder = tempfile.mkdtemp(prefix="i.ann-upload-")
        path = os.path.join(self.upload_folder, "iann.zip")
        with open(path, "wb") as f:
            f.write(library_zip())
        try:
            self.client.upload_file(path)
        except Exception as error:  # noqa: BLE001 - any failure of the cluster
            raise IannError(
                _("Cannot send the i.ann library to the Dask cluster <{}>: {}").format(
                    self.scheduler, error
                )
            ) from None

    def workers(self):
        return self.client.scheduler_info()["workers"]

    def check_workers(self, job):
        """Clear errors for workers that cannot see the library, data or bundle.

        Asked before anything of the library runs on them: first whether
        they can import it at all (with a function of the standard
        library), then what they see of the job.
        """
        if self.scheduler and not self.client.run_on_scheduler(
            importlib.util.find_spec, "iann"
        ):
            raise IannError(
                _("The Dask scheduler <{}> cannot import the i.ann library").format(
                    self.scheduler
                )
            )
        answers = self.client.run(importlib.util.find_spec, "iann", on_error="return")
        blind = sorted(
            worker
            for worker, answer in answers.items()
            if not answer or isinstance(answer, Exception)
        )
        if blind:
            raise IannError(
                _(
                    "Dask worker <{}> cannot import the i.ann library sent to "
                    "the cluster"
                ).format(", ".join(blind))
            )
        answers = self.client.run(visibility_problem, job, on_error="return")
        problems = {}
        for worker, problem in sorted(answers.items()):
            if isinstance(problem, Exception):
                problem = "{}: {}".format(type(problem).__name__, problem)
            if problem:
                problems.setdefault(problem, []).append(worker)
        if problems:
            problem, workers = next(iter(problems.items()))
            raise IannError(
                _("Dask worker <{}> {}").format(", ".join(workers), problem)
            )

    def threads_per_worker(self):
        """Each worker's share of the cores of its machine (the smallest)."""
        if self.cluster is not None:
            return self.threads
        workers = self.workers()
        per_host = Counter(info["host"] for info in workers.values())
        cores = self.client.run(cores_available)
        return max(
            1,
            min(
                cores[address] // per_host[info["host"]]
                for address, info in workers.items()
            ),
        )

    def run(self, job, blocks, gpu=False, on_done=None):
        """Classify `blocks` on the cluster, `on_done` called with each BlockResult."""
        from concurrent.futures import CancelledError

        from distributed import as_completed
        from distributed.comm import CommClosedError
        from distributed.scheduler import KilledWorker

        futures = [
            self.client.submit(
                run_block,
                job,
                block,
                key="i.ann-{}-{}".format(job.id, block.index),
                pure=False,
                resources={"GPU": 1} if gpu else None,
            )
            for block in blocks
        ]
        by_key = {f.key: b for f, b in zip(futures, blocks)}
        try:
            for future in as_completed(futures, loop=self.client.loop):
                try:
                    result = future.result()
                except KilledWorker:
                    from iann.jobs.block import describe

                    raise IannError(
                        _(
                            "The Dask workers classifying {} died several times "
                            "(out of memory, or a GRASS error: see the workers' "
                            "output)"
                        ).format(describe(job, by_key[future.key]))
                    ) from None
                on_done(result)
        except (CancelledError, CommClosedError) as error:
            # The scheduler died or the network failed: Dask cancels every
            # future. The blocks done are kept (their markers are written).
            raise ClusterLost(
                _("Lost the connection to the Dask scheduler <{}>").format(
                    self.scheduler or self.cluster.scheduler_address
                )
            ) from error
        finally:
            if self.client.status == "running":
                self.client.cancel(futures)
