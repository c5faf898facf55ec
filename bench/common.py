"""Shared set-up for the bench scripts: a temporary GRASS session."""

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(
    0,
    subprocess.check_output(["grass", "--config", "python_path"], text=True).strip(),
)
sys.path.insert(0, os.path.join(REPO, "lib"))


@contextmanager
def grass_session(epsg="3358"):
    """A throw-away GRASS project, initialised for this process."""
    import grass.script.setup as gsetup

    with tempfile.TemporaryDirectory() as tmp:
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


def print_table(header, rows):
    """A plain-text table, columns padded to their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print("  ".join("{:<{w}}".format(h, w=w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join("{:<{w}}".format(str(x), w=w) for x, w in zip(row, widths)))
