"""Test fixtures: a real GRASS session with i.ann installed by g.extension.

The session-wide fixture creates a temporary GRASS project (EPSG:3358, the
North Carolina demo's), installs the addon from this checkout into a
temporary GRASS_ADDON_BASE with g.extension, and puts the installed modules
on PATH, so tests run them exactly as a user does. Each test gets a fresh
mapset of its own.
"""

import html
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(
    0,
    subprocess.check_output(["grass", "--config", "python_path"], text=True).strip(),
)
sys.path.insert(0, str(REPO / "lib"))

import grass.script as gs  # noqa: E402
import grass.script.setup as gsetup  # noqa: E402

# A suite started in the background by a script (as run_tests.sh starts its
# two pytest processes) inherits SIGINT ignored, and so would every module
# it starts: Ctrl-C tests could not interrupt them. A handler, unlike an
# ignored signal, is not inherited across exec: the modules get Python's own.
signal.signal(signal.SIGINT, signal.default_int_handler)

MODULES = ("i.ann.patches", "i.ann.train", "i.ann.classify", "i.ann.sample")


def install_addon(addon_base, env=None):
    """g.extension from this checkout into addon_base, offline as the README
    says (demo/grass-offline: GitHub is never needed)."""
    addon_base = Path(addon_base)
    addon_base.mkdir(parents=True, exist_ok=True)
    env = dict(env or os.environ, GRASS_ADDON_BASE=str(addon_base))
    return subprocess.run(
        [
            str(REPO / "demo" / "grass-offline"),
            "g.extension",
            "extension=i.ann",
            "url={}".format(REPO),
        ],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.fixture(scope="session")
def grass_session(tmp_path_factory):
    base = tmp_path_factory.mktemp("grassdata")
    subprocess.run(
        ["grass", "-c", "EPSG:3358", "-e", str(base / "nc")],
        check=True,
        capture_output=True,
    )
    session = gsetup.init(str(base / "nc" / "PERMANENT"))
    addons = base / "addons"
    os.environ["GRASS_ADDON_BASE"] = str(addons)
    os.environ["PATH"] = os.pathsep.join(
        [str(addons / "scripts"), str(addons / "bin"), os.environ["PATH"]]
    )
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    result = install_addon(addons)
    if result.returncode != 0 or not (addons / "scripts" / "i.ann.train").exists():
        pytest.fail("g.extension failed:\n" + result.stdout + result.stderr)
    yield {"dbase": base, "addons": addons}
    session.finish()


@pytest.fixture
def mapset(grass_session, request):
    """A fresh mapset for one test, with a small default region."""
    name = "t_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    name = name[:60]
    gs.run_command("g.mapset", flags="c", mapset=name, quiet=True)
    gs.run_command("g.region", n=1800, s=0, e=2400, w=0, res=30, quiet=True)
    yield name
    gs.run_command("g.mapset", mapset="PERMANENT", quiet=True)


def run(module, *flags, **options):
    """Run a module as a user would; return the CompletedProcess."""
    args = [module] + ["--" + f if len(f) > 1 else "-" + f for f in flags]
    args += ["{}={}".format(k, v) for k, v in options.items()]
    return subprocess.run(args, capture_output=True, text=True)


# TensorFlow's C++ start-up lines, written before its logging is set up
# (so TF_CPP_MIN_LOG_LEVEL cannot hold them back) on CPUs where it turns
# oneDNN on (AVX512_VNNI, AMX): not i.ann's messages.
BACKEND_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\])"
)


def own_messages(text):
    """A module's output without TensorFlow's C++ start-up lines."""
    return "".join(
        line for line in text.splitlines(True) if not BACKEND_CHATTER.match(line)
    )


def run_ok(module, *flags, **options):
    result = run(module, *flags, **options)
    assert result.returncode == 0, result.stderr
    return result


def assert_fails(result, *fragments):
    """A module failed with a GRASS error naming what was wrong, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "ERROR" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # GRASS wraps long messages: compare with the line breaks taken out.
    message = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in message, result.stderr


def raster_exists(name):
    return bool(gs.find_file(name, element="cell")["fullname"])


def read_map(name, null=None, dtype=None):
    """A raster map as an array on the current region (grass.script.array)."""
    import numpy as np
    from grass.script import array as garray

    values = garray.array(name, null=null, dtype=dtype or np.float64)
    return np.asarray(values)


SYNTHETIC_CLASSES = {11: "water", 21: "forest", 31: "urban"}


def make_synthetic(prefix="s"):
    """Two bands and a 3-class reference (values 11, 21, 31) they explain.

    The classes depend on the bands' values around each cell, so a network
    with spatial context can learn them; a NULL hole in the reference and
    one in a band exercise NULL handling.
    """
    exprs = {
        prefix + "_b1": "sin(row() * 20) * 50 + 100 + col() * 0.1",
        prefix + "_b2": "cos(col() * 15) * 30 + 60",
    }
    for name, expr in exprs.items():
        gs.mapcalc("{} = float({})".format(name, expr), overwrite=True, quiet=True)
    gs.mapcalc(
        "{p}_ref = if(row() > 20 && row() < 25 && col() > 30 && col() < 36, null(),"
        " if({p}_b1 > 120, 11, if({p}_b2 > 60, 21, 31)))".format(p=prefix),
        overwrite=True,
        quiet=True,
    )
    rules = "\n".join("{}|{}".format(k, v) for k, v in SYNTHETIC_CLASSES.items())
    gs.write_command(
        "r.category", map=prefix + "_ref", rules="-", separator="pipe", stdin=rules
    )
    gs.write_command(
        "r.colors",
        map=prefix + "_ref",
        rules="-",
        stdin="11 0:0:255\n21 0:128:0\n31 255:0:0",
    )
    return [prefix + "_b1", prefix + "_b2"], prefix + "_ref"


@pytest.fixture(scope="session")
def nc_data(tmp_path_factory):
    """The North Carolina demo files (downloaded once, checksums verified)."""
    data = REPO / "demo" / "data"
    result = subprocess.run(
        [sys.executable, str(REPO / "demo" / "get_data.py"), str(data)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return data


@pytest.fixture(scope="session")
def synthetic_patches(grass_session, tmp_path_factory):
    """A dataset of 16 x 16 patches of the synthetic maps (shared by tests)."""
    folder = tmp_path_factory.mktemp("patches") / "patches"
    # Back to the mapset of the test that first asked for the dataset.
    caller = gs.gisenv()["MAPSET"]
    gs.run_command("g.mapset", flags="c", mapset="shared_training", quiet=True)
    gs.run_command("g.region", n=1800, s=0, e=2400, w=0, res=30, quiet=True)
    bands, reference = make_synthetic()
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=folder,
        size=16,
        number=120,
        seed=1,
    )
    gs.run_command("g.mapset", mapset=caller, quiet=True)
    return folder


def train_bundle(patches, output, **options):
    """Train a small bundle on a dataset; return its folder."""
    settings = dict(filters=8, epochs=8, batch_size=8, learning_rate=0.01, seed=1)
    settings.update(options)
    run_ok("i.ann.train", input=patches, output=output, **settings)
    return output


@pytest.fixture(scope="session")
def trained_bundle(synthetic_patches, tmp_path_factory):
    """A small fcn bundle trained on the synthetic maps (shared by tests)."""
    return train_bundle(synthetic_patches, tmp_path_factory.mktemp("bundle") / "model")


@pytest.fixture(scope="session")
def unet_bundle(synthetic_patches, tmp_path_factory):
    """A small U-Net bundle (depth 2) trained on the synthetic maps."""
    return train_bundle(
        synthetic_patches,
        tmp_path_factory.mktemp("unet") / "model",
        architecture="unet",
        depth=2,
        filters=4,
    )


def manual_block(page, heading):
    """The first code block after `heading` in a manual page, as printed."""
    text = (REPO / page).read_text()
    block = text[text.index(heading) :].split("<pre>", 1)[1].split("</pre>", 1)[0]
    return html.unescape(block).strip("\n")
