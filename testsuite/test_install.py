"""g.extension installs and removes the suite; modules answer like GRASS modules."""

import os
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import MODULES, install_addon

LIBRARY_FILES = (
    "__init__.py",
    "formats/dataset.py",
    "nn/architectures.py",
    "predict/pipeline.py",
    "jobs/classify.py",
)


def test_installed_files(grass_session):
    addons = grass_session["addons"]
    for module in MODULES:
        assert (addons / "scripts" / module).is_file()
        page = addons / "docs" / "html" / (module + ".html")
        assert page.is_file()
        assert "DESCRIPTION" in page.read_text()
    assert (addons / "docs" / "html" / "i.ann.html").is_file()
    for name in LIBRARY_FILES:
        assert (addons / "etc" / "i.ann" / "iann" / name).is_file()


@pytest.mark.parametrize("module", MODULES)
def test_help_is_fast_and_keras_free(grass_session, module):
    # Python lists every module it imports (-X importtime) on stderr.
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    start = time.perf_counter()
    result = subprocess.run([module, "--help"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stderr
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "grass.script" in imported  # the listing works
    assert not [m for m in imported if m.split(".")[0] in ("keras", "tensorflow")]
    assert seconds < 2.0, "{} --help took {:.2f} s".format(module, seconds)


@pytest.mark.parametrize("module", MODULES)
def test_interface_description_is_valid_xml(grass_session, module):
    result = subprocess.run(
        [module, "--interface-description"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    root = ET.fromstring(result.stdout)
    assert root.tag == "task" and root.get("name") == module
    keys = {p.get("name") for p in root.iter("parameter")}
    expected = {
        "i.ann.patches": {
            "input",
            "reference",
            "output",
            "size",
            "number",
            "validation",
            "seed",
        },
        "i.ann.train": {
            "input",
            "output",
            "architecture",
            "epochs",
            "batch_size",
            "seed",
        },
        "i.ann.classify": {"input", "model", "output", "reference", "report"},
        "i.ann.sample": {
            "classified",
            "uncertainty",
            "training",
            "npoints",
            "distance",
            "output",
            "column",
        },
    }[module]
    assert expected <= keys


def test_install_and_remove_in_other_addon_base(grass_session, tmp_path):
    base = tmp_path / "other_addons"
    result = install_addon(base)
    assert result.returncode == 0, result.stderr
    for module in MODULES:
        assert (base / "scripts" / module).is_file()
    assert (base / "etc" / "i.ann" / "iann" / "train" / "run.py").is_file()
    env = dict(os.environ, GRASS_ADDON_BASE=str(base))
    result = subprocess.run(
        ["g.extension", "extension=i.ann", "operation=remove", "-f"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    for module in MODULES:
        assert not (base / "scripts" / module).exists()
        assert not (base / "docs" / "html" / (module + ".html")).exists()


def test_library_found_when_addon_base_points_elsewhere(grass_session, tmp_path):
    # grass-session resets GRASS_ADDON_BASE to a GRASS 7 folder: the
    # installed scripts still find the library beside them.
    env = dict(os.environ, GRASS_ADDON_BASE=str(tmp_path / "elsewhere"))
    result = subprocess.run(
        [
            "i.ann.train",
            "input={}".format(tmp_path / "none"),
            "output={}".format(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert "not installed" not in message
    assert "Dataset folder <{}> does not exist".format(tmp_path / "none") in message
