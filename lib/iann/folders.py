"""Write output folders atomically: build them beside the target, then rename.

A failure part-way leaves the user's existing output untouched and no
half-written folder behind.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager

from .errors import IannError


def check_new_folder(path, overwrite, what="Output folder"):
    """Refuse an existing path without overwrite, or a parent that is missing."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise IannError(
            _("{} <{}>: folder <{}> does not exist").format(what, path, parent)
        )
    if os.path.exists(path) and not overwrite:
        raise IannError(
            _("{} <{}> exists; use --overwrite to replace it").format(what, path)
        )
    return path


def check_new_file(path, overwrite, what="Output file"):
    """Refuse an existing file without overwrite, or a parent that is missing."""
    path = check_new_folder(path, overwrite, what)
    if os.path.isdir(path):
        raise IannError(_("{} <{}> is a folder").format(what, path))
    return path


@contextmanager
def atomic_folder(path, overwrite):
    """Yield a temporary folder that replaces `path` when the block succeeds."""
    path = check_new_folder(path, overwrite)
    parent, name = os.path.split(path)
    tmp = tempfile.mkdtemp(prefix=".{}.tmp-".format(name), dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=".{}.old-".format(name), dir=parent)
        os.rename(path, os.path.join(old, name))
    os.rename(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)
