"""Temporary maps of i.ann's runs: named by their run, removed by the next.

A run names each temporary map `iann_<what>_<node>_<pid>` (GRASS's
append_node_pid: the machine and the process) and removes its own when it
ends, whatever ended it but SIGKILL or a power cut. So that those are not
left for good, every run first removes the temporary maps (rasters and
vectors) of this mapset whose process on this machine no longer exists.
The maps of a run on another machine sharing the GRASS database are left
alone: its process cannot be asked from here (nor can a process of
another PID namespace with the same host name, e.g. a container: give
containers sharing a mapset host names of their own). (A job's own maps,
`tmp_iann_<job>*`, are not temporary in this sense: they are kept for a
rerun, jobs/store.py.)
"""

import os
import platform
import re

import grass.script as gs

from iann.grass.rasters import remove_maps

PREFIX = "iann_"


def temporary_map_name(what):
    """The name of a temporary map of this run: iann_<what>_<node>_<pid>."""
    return gs.append_node_pid(PREFIX + what)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_dead_runs_maps():
    """Remove the temporary maps of this mapset left by dead runs on this machine.

    Returns the names removed.
    """
    node = gs.legalize_vector_name(platform.node(), fallback_prefix="")
    # (tmp_: the name of the object map's temporary before 0.1.0's end)
    pattern = re.compile(
        r"(?:tmp_)?{}\w*_{}_(\d+)".format(re.escape(PREFIX), re.escape(node))
    )
    removed = []
    for element in ("raster", "vector"):
        names = gs.list_strings(element, pattern=PREFIX.join("**"), mapset=".")
        names = [name.split("@", 1)[0] for name in names]
        dead = [
            name
            for name in names
            if (found := pattern.fullmatch(name))
            and int(found.group(1)) != os.getpid()
            and not process_alive(int(found.group(1)))
        ]
        remove_maps(dead, element)
        removed += dead
    if removed:
        gs.verbose(
            _(
                "Removed the temporary maps of runs that ended without cleaning up: {}"
            ).format(", ".join(removed))
        )
    return removed
