"""The training options, without a GRASS session or Keras (tiling: test_sampling)."""

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

from iann.errors import IannError
from iann.train.settings import (
    TrainingSettings,
    class_weights_for,
    parse_params,
    select_bands,
)

BANDS = [{"name": "s_b1@PERMANENT"}, {"name": "s_b2@PERMANENT"}]
CLASSES = [{"value": 11}, {"value": 21}, {"value": 31}]


def test_importable_without_grass_or_keras():
    code = (
        "import sys; sys.path.insert(0, {!r}); "
        "import iann.train.settings, iann.predict.tiling, iann.predict.pipeline; "
        "print(sorted(m for m in ('grass', 'keras') if m in sys.modules))"
    ).format(str(REPO / "lib"))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_parse_params():
    assert parse_params("a=1, b=2.5,c=TRUE,d=relu ,e=false") == {
        "a": 1,
        "b": 2.5,
        "c": True,
        "d": "relu",
        "e": False,
    }
    assert parse_params("") == {} and parse_params(None) == {}
    for bad in ("oops", "=3", "a=1,b"):
        with pytest.raises(IannError, match="is not of the form key=value"):
            parse_params(bad)


def test_select_bands():
    assert select_bands(None, BANDS) == [0, 1]
    assert select_bands(["s_b2"], BANDS) == [1]
    assert select_bands(["2", "s_b1@PERMANENT"], BANDS) == [1, 0]
    with pytest.raises(IannError, match="no band <nir>; its bands are: s_b1"):
        select_bands(["nir"], BANDS)
    with pytest.raises(IannError, match="named twice"):
        select_bands(["1", "s_b1"], BANDS)


def test_class_weights(tmp_path):
    np.testing.assert_array_equal(class_weights_for("none", CLASSES, [1, 2, 3]), 1)
    # n / (K n_c) over the K classes present; an absent class weighs 0.
    np.testing.assert_allclose(
        class_weights_for("balanced", CLASSES, [10, 30, 0]), [2.0, 2 / 3, 0.0]
    )
    # sqrt: proportional to 1 / sqrt(cells), 1 on average over the cells.
    counts = np.array([10, 40, 0])
    weights = class_weights_for("sqrt", CLASSES, counts)
    assert weights[0] == pytest.approx(2 * weights[1]) and weights[2] == 0
    assert (weights * counts).sum() == pytest.approx(counts.sum())
    path = tmp_path / "weights.txt"
    path.write_text("# value weight\n11 0.5\n21,2\n31=0\n")
    np.testing.assert_allclose(class_weights_for(str(path), CLASSES, None), [0.5, 2, 0])
    path.write_text("11 0.5\n21 2\n")
    with pytest.raises(IannError, match="no weight for class 31"):
        class_weights_for(str(path), CLASSES, None)
    path.write_text("11 -1\n")
    with pytest.raises(IannError, match="line 1: negative weight"):
        class_weights_for(str(path), CLASSES, None)
    with pytest.raises(IannError, match="neither none, balanced, sqrt nor a file"):
        class_weights_for(str(tmp_path / "missing"), CLASSES, None)


def header_answers(script):
    """{key: answer} of the `# %option` blocks of a module's header."""
    answers = {}
    for block in re.findall(r"# %option(.*?)# %end", script.read_text(), re.S):
        key = re.search(r"# % key: (\S+)", block)
        answer = re.search(r"# % answer: (.*)", block)
        if key and answer:
            answers[key.group(1)] = answer.group(1).strip()
    return answers


def test_training_defaults_are_the_modules():
    answers = header_answers(REPO / "i.ann.train" / "i.ann.train.py")
    defaults = TrainingSettings()
    assert answers.pop("augmentation") == "dihedral" and defaults.augment
    checked = set()
    for field in dataclasses.fields(TrainingSettings):
        if field.name in answers:
            value = getattr(defaults, field.name)
            assert type(value)(answers[field.name]) == value, field.name
            checked.add(field.name)
    assert checked == set(answers), set(answers) - checked
    assert {"architecture", "filters", "depth", "epochs", "seed"} <= checked


def test_settings_survive_a_checkpoint():
    # Resuming compares the settings with those saved as JSON.
    settings = TrainingSettings.of({"bands": ["s_b1"], "params": {"width": 6}})
    saved = dataclasses.asdict(settings)
    assert json.loads(json.dumps(saved)) == saved
    assert settings.changed() == {"bands": ["s_b1"], "params": {"width": 6}}
    assert TrainingSettings.of(settings) is settings


# OpenVINO 2025's error for a model.onnx cut in half, as it raised it.
OPENVINO_TRUNCATED = (
    "Exception from src/inference/src/cpp/core.cpp:132:\n"
    "Exception from src/inference/src/dev/plugin.cpp:59:\n"
    "Check 'm_model->ParseFromIstream(&model_file)' failed at "
    "src/frontends/onnx/frontend/src/core/graph_iterator_proto.cpp:563:\n"
    "FrontEnd API failed with GeneralFailure:\n"
    "Model can't be parsed\n\n\n"
)


def test_engine_errors_say_what_not_where():
    from iann.predict.engines import engine_error_text

    assert (
        engine_error_text(RuntimeError(OPENVINO_TRUNCATED))
        == "FrontEnd API failed with GeneralFailure: Model can't be parsed"
    )
    # Long errors are cut after a whole word.
    words = " ".join("word{}".format(i) for i in range(200))
    cut = engine_error_text(RuntimeError(words), limit=50)
    assert cut == "word0 word1 word2 word3 word4 word5 word6 word7 ..."
    assert engine_error_text(RuntimeError("\n")) == "RuntimeError"
