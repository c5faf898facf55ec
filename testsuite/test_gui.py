"""Each module's dialog opens in the GRASS GUI, with sensible tabs.

The dialogs are built by the GRASS GUI itself (gui_core/forms.py, through
testsuite/gui_dialog.py) with Debian's /usr/bin/python3, which has wxPython
(grass-gui), on a virtual X server (xvfb); .ci/setup installs both. A
missing one is a failure, not a skip: the test would otherwise pass without
checking anything.
"""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib import image as mpimg

import gui_dialog

# guisection tabs of each module, the tab of a few options and flags on them,
# the options the parser requires.
EXPECTED = {
    "i.ann.patches": {
        "tabs": ["Input", "Output", "Sampling"],
        "options": {
            "input": "Input",
            "group": "Input",
            "reference": "Input",
            "training": "Input",
            "column": "Input",
            "label_column": "Input",
            "output": "Output",
            "validation_map": "Output",
            "size": "Sampling",
            "sampling": "Sampling",
            "number": "Sampling",
            "seed": "Sampling",
        },
        "flags": {"n": "Sampling", "p": "Output"},
        # reference= or training= (a vector): the rules require one of them.
        "required": ["output"],
    },
    "i.ann.train": {
        "tabs": [
            "Input",
            "Output",
            "Network",
            "Training",
            "Decision",
            "Precision",
            "Import",
        ],
        "options": {
            "input": "Input",
            "bands": "Input",
            "output": "Output",
            "plot": "Output",
            "export": "Output",
            "import": "Import",
            "classes": "Import",
            "mean": "Import",
            "std": "Import",
            "margin": "Import",
            "architecture": "Network",
            "filters": "Network",
            "depth": "Network",
            "epochs": "Training",
            "batch_size": "Training",
            "learning_rate": "Training",
            "loss": "Training",
            "augmentation": "Training",
            "precision": "Training",
            "decision": "Decision",
            "decision_class": "Decision",
            "decision_recall": "Decision",
            "decide": "Decision",
            "inference_precision": "Precision",
            "calibration_patches": "Precision",
        },
        "flags": {"n": "Network", "r": "Training"},
        "required": [],
    },
    "i.ann.classify": {
        "tabs": ["Input", "Output", "Processing", "Accuracy"],
        "options": {
            "input": "Input",
            "group": "Input",
            "model": "Input",
            "output": "Output",
            "probabilities": "Output",
            "uncertainty": "Output",
            "tile_size": "Processing",
            "block_size": "Processing",
            "nprocs": "Processing",
            "scheduler": "Processing",
            "engine": "Processing",
            "precision": "Processing",
            "memory": "Processing",
            "vector": "Output",
            "min_area": "Output",
            "reference": "Accuracy",
            "reference_vector": "Accuracy",
            "column": "Accuracy",
            "report": "Accuracy",
        },
        "flags": {
            "n": "Input",
            "t": "Output",
            "s": "Output",
            "e": "Accuracy",
            "g": "Processing",
            "a": "Output",
        },
        # model and output are checked by the module (output is not needed
        # with -e), so the parser requires none of them.
        "required": [],
    },
    "i.ann.sample": {
        "tabs": ["Input", "Sampling", "Output"],
        "options": {
            "classified": "Input",
            "uncertainty": "Input",
            "training": "Input",
            "npoints": "Sampling",
            "distance": "Sampling",
            "method": "Sampling",
            "seed": "Sampling",
            "nprocs": "Sampling",
            "output": "Output",
            "column": "Output",
            "label_column": "Output",
        },
        "flags": {},
        "required": ["classified", "uncertainty", "npoints", "output"],
    },
}
# Tabs GRASS adds to every dialog: the standard flags (--overwrite,
# --verbose, --quiet, which have no guisection), the run's output, and the
# manual page (found in $GRASS_ADDON_BASE/docs/html).
STANDARD_TABS = ["Optional", "Command output", "Manual"]
GRASS_PYTHON = gui_dialog.GRASS_PYTHON
# An option's range of numbers, "low-high" (GRASS writes "options: 1-8").
RANGE = re.compile(r"^(-?[0-9.]+)-(-?[0-9.]+)$")


@pytest.fixture(scope="module")
def display():
    """An Xvfb of our own on a free display number."""
    if not shutil.which("Xvfb"):
        pytest.fail("Xvfb is not installed (apt-get install xvfb, or .ci/setup)")
    check = subprocess.run(
        [GRASS_PYTHON, "-c", "import wx"], capture_output=True, text=True
    )
    if check.returncode != 0:
        pytest.fail(
            "{} cannot import wx: install grass-gui (or run .ci/setup)\n{}".format(
                GRASS_PYTHON, check.stderr
            )
        )
    process, name = gui_dialog.start_xvfb()
    yield name
    gui_dialog.stop_xvfb(process)


# Known harmless start-up messages, about the machine, not the dialog:
# wx's warning when $LANG names a locale that is not generated (the dialog
# then stays in English; `grass --exec` and grass-session set LANG to
# en_US, which a bare Debian lacks), and GTK's on machines with
# a desktop stack (gui_dialog.py already keeps GTK from looking for the
# accessibility bus and dconf): an accessibility bus or a sound-theme
# module that is not there, font cache notes.
HARMLESS = (
    "Warning: Cannot set locale to language",
    "dbind-WARNING",
    'Failed to load module "canberra-gtk-module"',
    'Failed to load module "atk-bridge"',
    "Fontconfig warning",
)


def real_errors(stderr):
    """The lines of stderr that are not harmless noise."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not any(noise in line for noise in HARMLESS)
    ]


def assert_valid_default(name, param):
    """A default the dialog shows is one the module accepts."""
    default = param["default"]
    if not default:
        return
    parts = default.split(",") if param["multiple"] else [default]
    for part in parts:
        if param["type"] == "integer":
            number = int(part)
        elif param["type"] in ("float", "double"):
            number = float(part)
        values = param["values"]
        bounds = RANGE.match(values[0]) if len(values) == 1 else None
        if param["type"] != "string" and bounds:
            low, high = (float(v) for v in bounds.groups())
            assert low <= number <= high, (name, default, values)
        elif values:
            assert part in values, (name, default, values)


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_dialog(grass_session, display, tmp_path, module):
    expected = EXPECTED[module]
    shot = tmp_path / "dialog.png"
    env = dict(os.environ, DISPLAY=display)
    result = gui_dialog.run_dialog(module, env, screenshot=shot)
    assert result.returncode == 0, result.stderr
    for word in ("Traceback", "Error", "ERROR"):
        assert word not in result.stderr, result.stderr
    assert not real_errors(result.stderr), result.stderr
    dialog = json.loads(result.stdout.strip().splitlines()[-1])

    # The module starts quickly and quietly when the GUI asks for its
    # interface (no TensorFlow import, no warnings).
    assert dialog["interface_stderr"] == ""
    assert dialog["interface_seconds"] < 10

    assert dialog["title"] == module
    # The guisection tabs (in any order: GRASS orders them as the options
    # come in the header), then GRASS's own. No "Required" tab: every
    # required option has a guisection. The dialog opens on Input.
    tabs = dialog["tabs"]
    count = len(expected["tabs"])
    assert sorted(tabs[:count]) == sorted(expected["tabs"]), tabs
    assert tabs[count:] == STANDARD_TABS, tabs
    assert tabs[0] == dialog["selected_tab"] == "Input"

    # Every option and flag has a widget, on the expected tab.
    assert set(dialog["options"]) == set(dialog["params"])
    for name, tab in expected["options"].items():
        assert dialog["options"].get(name) == tab, (name, dialog["options"])
    for name, tab in expected["flags"].items():
        assert dialog["flags"].get(name) == tab, (name, dialog["flags"])
    for name in ("overwrite", "verbose", "quiet"):
        assert dialog["flags"].get(name) == "Optional"
    required = [n for n, p in dialog["params"].items() if p["required"]]
    assert sorted(required) == sorted(expected["required"])

    # Defaults are valid values; the dialog's command carries no others.
    for name, param in dialog["params"].items():
        assert_valid_default(name, param)
    assert dialog["command"][0] == module
    for item in dialog["command"][1:]:
        key, value = item.split("=", 1)
        assert value == dialog["params"][key]["default"], item

    # The screenshot shows the dialog: big enough, not blank or black.
    assert dialog["screenshot_size"] == [650, 700]
    pixels = mpimg.imread(str(shot))
    height, width = pixels.shape[:2]
    assert width > 200 and height > 200
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = np.unique(rgb, axis=0)
    assert len(colours) > 20, len(colours)
    assert 0.3 < pixels[..., :3].mean() < 0.99
