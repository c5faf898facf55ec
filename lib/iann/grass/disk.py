"""The disk a mapset lives on: space left, and a full disk named as such.

A job's maps, markers and temporary maps are all written in the current
mapset; when its filesystem fills up, the user is told which one, and the
work done so far is kept (errors.DiskFull).
"""

import errno
import os

import grass.script as gs

from iann.errors import DiskFull, IannError

# Less free space than this (or than a hundredth of a small disk) after a
# failure: the disk filled up, whatever the error said (GRASS modules
# report a full disk as a failed write).
NEARLY_FULL = 16 * 2**20


def size_text(size):
    return (
        "{:.1f} GB".format(size / 1e9)
        if size >= 1e9
        else "{:.0f} MB".format(size / 1e6)
    )


def free_space(folder):
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize


def nearly_full(folder):
    info = os.statvfs(folder)
    size = info.f_blocks * info.f_frsize
    return info.f_bavail * info.f_frsize < min(NEARLY_FULL, size // 100)


def mount_point(folder):
    folder = os.path.realpath(folder)
    while not os.path.ismount(folder):
        folder = os.path.dirname(folder)
    return folder


def disk_full(error, folder):
    """The DiskFull to report when `error` came from a full disk (said by
    the error, or seen in the space left on the mapset's `folder`), naming
    the filesystem; else None. Called where the job runs, not in workers."""
    said = isinstance(error, DiskFull) or (
        isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    )
    if isinstance(error, IannError) and not said:
        return None  # a message of its own, about the input
    try:
        if not said and not nearly_full(folder):
            return None
        free = free_space(folder)
    except OSError:
        return None
    detail = str(error).strip().splitlines()
    return DiskFull(
        _(
            "The disk of mapset <{}> is full (the filesystem at <{}>, {} free){}. "
            "Make room on it, then run the same command again"
        ).format(
            folder,
            mount_point(folder),
            size_text(free),
            ": " + detail[-1] if detail else "",
        )
    )


def mapset_folder():
    """The current mapset's folder."""
    env = gs.gisenv()
    return os.path.join(env["GISDBASE"], env["LOCATION_NAME"], env["MAPSET"])
