"""The example scripts, run the two ways users run Python with GRASS.

examples/chain_grass_exec.py under `grass PROJECT --exec python3`, and
examples/chain_grass_session.py from plain Python with grass-session, both
on the North Carolina data in a project of their own, with a tiny training.
Each must finish and print the accuracy on the held-out blocks; the maps
and report they make are checked.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

TINY = ["--epochs", "1", "--number", "60", "--filters", "4"]


def plain_environment(addons):
    """The environment of a shell outside GRASS, with the addon installed."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GRASS", "GIS")) and k not in ("LD_LIBRARY_PATH",)
    }
    env["PATH"] = os.pathsep.join(
        p
        for p in os.environ["PATH"].split(os.pathsep)
        if not p.startswith(os.environ["GISBASE"]) and str(addons) not in p
    )
    env["GRASS_ADDON_BASE"] = str(addons)
    return env


@pytest.fixture(scope="module")
def nc_project(grass_session, nc_data, tmp_path_factory):
    """A project of its own holding the NC demo data in PERMANENT."""
    gisdb = tmp_path_factory.mktemp("examples")
    env = plain_environment(grass_session["addons"])
    subprocess.run(
        ["grass", "-c", "EPSG:3358", "-e", str(gisdb / "nc")],
        check=True,
        capture_output=True,
        env=env,
    )
    subprocess.run(
        [
            "grass",
            str(gisdb / "nc" / "PERMANENT"),
            "--exec",
            "bash",
            str(REPO / "demo" / "import_nc.sh"),
            str(nc_data),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    return gisdb, env


def map_exists(gisdb, mapset, name):
    return (gisdb / "nc" / mapset / "cell" / name).is_file()


def check_outputs(result, gisdb, mapset, work):
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "overall accuracy" in result.stdout
    report = json.loads((work / "report.json").read_text())
    assert report["cells"] > 20000
    # Overall accuracy and kappa, computed here from the confusion matrix.
    matrix = np.array(report["confusion_matrix"]["matrix"], dtype=np.float64)
    total = matrix.sum()
    assert total == report["cells"]
    agreement = np.trace(matrix) / total
    chance = (matrix.sum(axis=0) * matrix.sum(axis=1)).sum() / total**2
    assert report["overall_accuracy"] == pytest.approx(agreement, abs=1e-9)
    assert report["kappa"] == pytest.approx(
        (agreement - chance) / (1 - chance), abs=1e-9
    )
    assert map_exists(gisdb, mapset, "landcover_ann")
    assert not map_exists(gisdb, mapset, "MASK")


def test_script_in_grass_exec(nc_project, tmp_path):
    gisdb, env = nc_project
    result = subprocess.run(
        [
            "grass",
            str(gisdb / "nc" / "PERMANENT"),
            "--exec",
            "python3",
            str(REPO / "examples" / "chain_grass_exec.py"),
            str(tmp_path / "work"),
        ]
        + TINY,
        capture_output=True,
        text=True,
        env=env,
    )
    check_outputs(result, gisdb, "PERMANENT", tmp_path / "work")


def test_script_with_grass_session(nc_project, tmp_path):
    gisdb, env = nc_project
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "chain_grass_session.py"),
            str(gisdb),
            "nc",
            str(tmp_path / "work"),
            "--mapset",
            "scripted",
        ]
        + TINY,
        capture_output=True,
        text=True,
        env=env,
    )
    check_outputs(result, gisdb, "scripted", tmp_path / "work")


def test_transfer_walkthrough(nc_project, tmp_path):
    """On imagery "of another sensor", fine-tuning beats the model as it is."""
    gisdb, env = nc_project
    result = subprocess.run(
        [
            "grass",
            str(gisdb / "nc" / "PERMANENT"),
            "--exec",
            "bash",
            str(REPO / "examples" / "transfer_nc.sh"),
            str(tmp_path),
            "4",
            "300",
            "8",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    as_is, image_norm, tuned = (
        json.loads((tmp_path / (name + ".json")).read_text())
        for name in ("east_as_is", "east_image_norm", "east_tuned")
    )
    assert as_is["cells"] == tuned["cells"] > 10000
    # Measured (4 epochs, 300 patches, 8 filters): kappa 0.038 as it is,
    # 0.312 with -n, 0.405 fine-tuned.
    assert image_norm["kappa"] > as_is["kappa"]
    assert tuned["kappa"] > as_is["kappa"] + 0.05
    assert "fine-tuned" in result.stdout


def test_labelling_loop(nc_project, tmp_path):
    """examples/active_nc.sh, tiny: two rounds of proposed points, each
    labelled from landclass96 where it lies, kept apart from the points
    labelled before, and all of them in the last training."""
    gisdb, env = nc_project
    project = str(gisdb / "nc" / "PERMANENT")
    result = subprocess.run(
        ["grass", project, "--exec", "bash", str(REPO / "examples" / "active_nc.sh")]
        + [str(tmp_path / "work"), "60", "30", "2", "4", "120", "3"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for round_, points in ((1, 60), (2, 90), (3, 120)):
        assert "round {}: {} points, kappa".format(round_, points) in result.stdout

    def grass(*command):
        return subprocess.run(
            ["grass", project, "--exec", *command],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout

    xy = {}
    for name in ("points_0", "points_1", "points_2"):
        text = grass("v.out.ascii", "input=" + name, "format=point", "separator=pipe")
        xy[name] = np.array(
            [[float(v) for v in line.split("|")[:2]] for line in text.split()]
        )
        # Each point's class is landclass96's where it lies (r.what).
        classes = grass("v.db.select", "map=" + name, "columns=class", "-c").split()
        what = grass(
            "r.what",
            "map=landclass96",
            "separator=pipe",
            "coordinates=" + ",".join("{},{}".format(x, y) for x, y in xy[name]),
        ).split()
        assert [line.split("|")[3] for line in what] == classes
    assert len(xy["points_1"]) == len(xy["points_2"]) == 30
    # Proposals keep 3 cells (the default distance) from every point before.
    from scipy.spatial.distance import cdist

    assert cdist(xy["points_2"], np.vstack([xy["points_0"], xy["points_1"]])).min() >= (
        3 * 28.5
    )
    metadata = json.loads(
        (tmp_path / "work" / "patches_3" / "metadata.json").read_text()
    )
    assert (
        metadata["reference"]
        == "points_0@PERMANENT,points_1@PERMANENT,points_2@PERMANENT"
    )
    # The first network from scratch, each next one fine-tuned from the one
    # before it.
    for round_ in (1, 2, 3):
        training = json.loads(
            (
                tmp_path / "work" / "model_{}".format(round_) / "metadata.json"
            ).read_text()
        )["training"]
        expected = str(tmp_path / "work" / "model_{}".format(round_ - 1))
        assert training.get("pretrained") == (expected if round_ > 1 else None)
