"""Shared set-up for the bench scripts: a temporary GRASS session."""

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager

from tables import print_table  # noqa: F401 - the scripts' tables, from here

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(
    0,
    subprocess.check_output(["grass", "--config", "python_path"], text=True).strip(),
)
sys.path.insert(0, os.path.join(REPO, "lib"))


@contextmanager
def grass_session(epsg="3358", folder=None):
    """A throw-away GRASS project, initialised for this process (in `folder`)."""
    import grass.script.setup as gsetup

    if folder:
        # --folder names where the data may go (a larger disk): made if new
        os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        location = os.path.join(tmp, "bench")
        subprocess.run(
            ["grass", "-c", "EPSG:" + epsg, "-e", location],
            check=True,
            capture_output=True,
        )
        session = gsetup.init(os.path.join(location, "PERMANENT"))
        try:
            yield tmp
        finally:
            session.finish()


def module(name):
    """Command line running a module's script from the source tree."""
    return [sys.executable, os.path.join(REPO, name, name + ".py")]
