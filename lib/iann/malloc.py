"""glibc's reuse of freed memory, which some hosts of i.ann's code freeze.

Setting M_TRIM_THRESHOLD (by mallopt or by the MALLOC_TRIM_THRESHOLD_
environment variable) freezes glibc's mmap threshold at 128 KiB: every
larger buffer is then mapped afresh and unmapped when freed, and the
kernel zero-fills its pages each time. TensorFlow does so when Keras feeds
it a PyDataset (training), and a Dask nanny does so for its workers
(`distributed.nanny.pre-spawn-environ`). Raising both thresholds again
restores ordinary heap reuse for buffers up to the mmap threshold.
"""

import ctypes
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.cache  # called for every block and epoch
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to undo
        return None


def reuse_freed_memory(trim=1 << 30, mmap=1 << 25):
    """Keep freed memory up to `trim` bytes, map only buffers over `mmap`.

    The defaults: 32 MiB is the largest mmap threshold glibc reaches on its
    own; freed memory at the top of the heap is returned to the system
    beyond 1 GiB. Returns whether glibc took both settings.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, trim)) and bool(
        libc.mallopt(M_MMAP_THRESHOLD, mmap)
    )
