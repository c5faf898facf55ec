"""Rare and thin classes: the decision rule learnt on the validation patches
(i.ann.train decision=, i.ann.classify -a) and the overlap losses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import grass.script as gs

from conftest import (
    REPO,
    assert_fails,
    make_synthetic,
    read_map,
    run,
    run_ok,
    train_bundle,
)

THIN = 3  # the thin class of the constructed scene


def thin_scene():
    """Two textured background classes and one-cell-wide lines (3.1% of cells).

    The lines (class 3, every 31st row) are brighter in band 2 by about the
    texture's amplitude; the reference's rows 1-120 are for training, rows
    121-192 (two lines) are held out.
    """
    gs.run_command("g.region", n=192, s=0, e=192, w=0, res=1, quiet=True)
    noise = "(sin(row() * 123.7 + col() * 71.3) + sin(row() * 47.9 - col() * 151.1))"
    noise2 = "(sin(row() * 97.3 + col() * 71.3) + sin(row() * 47.9 - col() * 33.7))"
    gs.mapcalc(
        "thin_ref = if(row() % 31 == 7, 3, if(sin(row() * 4 + col() * 3) > 0, 1, 2))",
        overwrite=True,
        quiet=True,
    )
    gs.mapcalc(
        "thin_b1 = float(if(thin_ref == 1, 90, if(thin_ref == 2, 130, 110))"
        " + 25 * {})".format(noise),
        overwrite=True,
        quiet=True,
    )
    gs.mapcalc(
        "thin_b2 = float(60 + 20 * {} + if(thin_ref == 3, 50, 0))".format(noise2),
        overwrite=True,
        quiet=True,
    )
    gs.mapcalc("thin_train = if(row() <= 120, 1, null())", overwrite=True, quiet=True)
    gs.mapcalc(
        "thin_heldout = if(row() > 120, thin_ref, null())", overwrite=True, quiet=True
    )
    return ["thin_b1", "thin_b2"]


@pytest.fixture(scope="module")
def thin_bundle(grass_session, tmp_path_factory):
    """A small fcn trained on the scene's training rows with decision=macro_f1."""
    folder = tmp_path_factory.mktemp("thin")
    gs.run_command("g.mapset", flags="c", mapset="thin_classes", quiet=True)
    bands = thin_scene()
    gs.run_command("r.mask", raster="thin_train", quiet=True)
    try:
        run_ok(
            "i.ann.patches",
            input=",".join(bands),
            reference="thin_ref",
            output=folder / "patches",
            size=16,
            number=300,
            seed=1,
        )
    finally:
        gs.run_command("r.mask", flags="r", quiet=True)
    # run_ok, not conftest.train_bundle: the test reads the run's messages.
    result = run_ok(
        "i.ann.train",
        input=folder / "patches",
        output=folder / "model",
        filters=8,
        epochs=8,
        batch_size=16,
        learning_rate=0.01,
        seed=1,
        decision="macro_f1",
    )
    yield folder / "model", bands, result.stderr
    gs.run_command("g.mapset", mapset="PERMANENT", quiet=True)


def report_of(path):
    with open(path) as f:
        report = json.load(f)
    return report, {c["value"]: c for c in report["classes"]}


def test_decision_rule_raises_thin_class_recall(thin_bundle, tmp_path):
    bundle, bands, messages = thin_bundle
    gs.run_command("g.mapset", mapset="thin_classes", quiet=True)
    metadata = json.loads((bundle / "metadata.json").read_text())
    decision = metadata["decision"]
    assert decision["rule"] == "macro_f1"
    assert "Decision rule macro_f1: class biases" in " ".join(messages.split())
    # Learnt on validation cells only, and it helped there.
    assert decision["validation_cells"] == sum(decision["validation_cells_per_class"])
    assert decision["tuned"]["macro_f1"] > decision["argmax"]["macro_f1"]
    outputs = {}
    for name, flags in (("rule", ()), ("plain", ("a",))):
        run_ok(
            "i.ann.classify",
            *flags,
            input=",".join(bands),
            model=bundle,
            output=name,
            reference="thin_heldout",
            report=tmp_path / (name + ".json"),
        )
        outputs[name] = report_of(tmp_path / (name + ".json"))
    (rule, rule_classes), (plain, plain_classes) = outputs["rule"], outputs["plain"]
    # On held-out rows the network never saw, the rule finds far more of
    # the lines than the most probable class does, and the mean F1 rises.
    assert rule_classes[THIN]["recall"] >= plain_classes[THIN]["recall"] + 0.15
    assert rule["macro_f1"] > plain["macro_f1"]
    # The report and the map's history say which rule made the map.
    assert "class biases (macro_f1" in rule["decision_rule"]
    assert "-a" in plain["decision_rule"]
    info = gs.read_command("r.info", map="rule")
    assert "Classes: argmax after the bundle's class biases" in " ".join(info.split())


def test_class_maps_follow_the_rule_on_every_engine(thin_bundle):
    """The class map is argmax(p * exp(bias)) of the probability maps, from
    numpy (probabilities kept) and from each engine's own argmax (class map
    alone); -a gives argmax(p); the uncertainty map is the network's."""
    bundle, bands, _messages = thin_bundle
    gs.run_command("g.mapset", mapset="thin_classes", quiet=True)
    bias = np.array(
        json.loads((bundle / "metadata.json").read_text())["decision"]["bias"]
    )
    assert np.any(bias != 0)
    common = dict(input=",".join(bands), model=bundle)
    run_ok(
        "i.ann.classify", output="with_p", probabilities="p", uncertainty="u", **common
    )
    run_ok(
        "i.ann.classify",
        "a",
        output="plain_p",
        probabilities="q",
        uncertainty="v",
        **common,
    )
    probabilities = np.stack([read_map("p_{}".format(k)) for k in (1, 2, 3)])
    values = np.array([1, 2, 3])
    expected_rule = values[np.argmax(np.log(probabilities) + bias[:, None, None], 0)]
    expected_plain = values[np.argmax(probabilities, 0)]
    assert (expected_rule != expected_plain).mean() > 0.01
    maps = {"with_p": expected_rule, "plain_p": expected_plain}
    for engine in ("keras", "onnx", "openvino"):
        run_ok("i.ann.classify", output="c_" + engine, engine=engine, **common)
        maps["c_" + engine] = expected_rule
    run_ok("i.ann.classify", "a", output="a_onnx", engine="onnx", **common)
    maps["a_onnx"] = expected_plain
    for name, expected in maps.items():
        agreement = (read_map(name) == expected).mean()
        # Float rounding of the engines may split a near tie differently.
        assert agreement >= 0.999, (name, agreement)
    np.testing.assert_array_equal(read_map("u"), read_map("v"))
    np.testing.assert_array_equal(probabilities[0], read_map("q_1"))


def test_bundle_without_a_rule_maps_the_most_probable_class(trained_bundle, mapset):
    """A bundle trained before decision rules existed (no `decision` key)
    classifies as before, with or without -a, and says so."""
    assert "decision" not in json.loads((trained_bundle / "metadata.json").read_text())
    bands, reference = make_synthetic()
    for name, flags in (("c", ()), ("ca", ("a",))):
        run_ok(
            "i.ann.classify",
            *flags,
            input=",".join(bands),
            model=trained_bundle,
            output=name,
            probabilities=name + "_p",
            reference=reference,
            report="{}.json".format(name),
        )
    np.testing.assert_array_equal(read_map("c", null=0), read_map("ca", null=0))
    p = np.stack([read_map("c_p_{}".format(v), null=np.nan) for v in (11, 21, 31)])
    expected = np.where(
        np.isnan(p[0]), 0, np.array([11, 21, 31])[np.argmax(np.nan_to_num(p), 0)]
    )
    np.testing.assert_array_equal(read_map("c", null=0), expected)
    report = json.loads(open("c.json").read())
    assert report["decision_rule"] == "argmax of the probabilities"
    os.remove("c.json")
    os.remove("ca.json")


def test_decision_options_bad_input(synthetic_patches, tmp_path):
    output = tmp_path / "m"
    common = dict(input=synthetic_patches, output=output, filters=4, epochs=1)
    assert_fails(
        run("i.ann.train", decision="class_f1", decision_class="asphalt", **common),
        "Unknown class <asphalt>",
        "11 (water)",
    )
    assert_fails(
        run("i.ann.train", decision="class_recall", **common),
        "decision=class_recall needs decision_class=",
    )
    assert not output.exists()
    # A class named by its label is known.
    run_ok(
        "i.ann.train",
        decision="class_recall",
        decision_class="urban",
        decision_recall=0.9,
        **common,
    )
    decision = json.loads((output / "metadata.json").read_text())["decision"]
    assert decision["target_class"] == 2 and decision["target_recall"] == 0.9
    assert [b for i, b in enumerate(decision["bias"]) if i != 2] == [0.0, 0.0]


# --- the rule's search, against scikit-learn ------------------------------


def validation_like(seed, n_classes=4, absent=3, cells=20000):
    """Probabilities of a network that under-calls the rarest class (2),
    and labels in which class `absent` has no cell."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 2], size=cells, p=[0.6, 0.37, 0.03])
    logits = rng.normal(0, 1, (cells, n_classes))
    logits[np.arange(cells), labels] += 1.5
    logits[:, 2] -= 1.8  # the rare class is under-called
    logits[:, absent] += 0.3 * rng.normal(0, 1, cells)
    p = np.exp(logits)
    return (p / p.sum(1, keepdims=True)).astype(np.float32), labels


def sk_scores(labels, predicted):
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    present = sorted(set(labels) | set(predicted))
    return (
        f1_score(labels, predicted, labels=present, average="macro", zero_division=0),
        accuracy_score(labels, predicted),
        recall_score(
            labels, predicted, labels=[0, 1, 2, 3], average=None, zero_division=0
        ),
        f1_score(labels, predicted, labels=[0, 1, 2, 3], average=None, zero_division=0),
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_learnt_rule_scores_as_scikit_learn_says(seed):
    from iann.predict.decision import BIAS_GRID, learn_rule

    p, labels = validation_like(seed)
    record = learn_rule(p, labels, "macro_f1")
    bias = np.array(record["bias"])
    # No cell of class 3 in the validation labels: its bias stays 0.
    assert bias[3] == 0.0
    assert set(bias) <= set(BIAS_GRID)
    tuned = np.argmax(np.log(p) + bias, 1)
    plain = np.argmax(p, 1)
    macro, accuracy, recall, _f1 = sk_scores(labels, tuned)
    assert record["tuned"]["macro_f1"] == pytest.approx(macro, abs=1e-9)
    assert record["tuned"]["overall_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    np.testing.assert_allclose(record["tuned"]["recall"], recall, atol=1e-9)
    assert record["argmax"]["macro_f1"] == pytest.approx(sk_scores(labels, plain)[0])
    # The under-called class gains: its recall and the mean F1 rise.
    assert macro > sk_scores(labels, plain)[0] + 0.02
    assert recall[2] > sk_scores(labels, plain)[2][2] + 0.1
    # No single step of the grid on one class improves it by more than
    # the minimum gain (a local optimum of the coordinate search).
    for c in (0, 1, 2):
        for step in (-0.25, 0.25):
            trial = bias.copy()
            trial[c] += step
            other = sk_scores(labels, np.argmax(np.log(p) + trial, 1))[0]
            assert other <= macro + 0.002 + 1e-9


def test_one_class_targets():
    from iann.predict.decision import BIAS_GRID, learn_rule

    p, labels = validation_like(3)
    # class_f1: the bias of class 2 alone; none on the grid does better.
    record = learn_rule(p, labels, "class_f1", target=2)
    bias = np.array(record["bias"])
    assert np.count_nonzero(bias[[0, 1, 3]]) == 0

    def f1_of_class(value):
        trial = np.zeros(4)
        trial[2] = value
        return sk_scores(labels, np.argmax(np.log(p) + trial, 1))[3][2]

    assert f1_of_class(bias[2]) == pytest.approx(max(f1_of_class(v) for v in BIAS_GRID))
    assert bias[2] > 0
    # class_recall: the smallest bias (steps of 0.25) reaching the recall.
    record = learn_rule(p, labels, "class_recall", target=2, recall=0.8)
    value = record["bias"][2]
    assert record["target_reached"] is True

    def recall_of_class(v):
        trial = np.zeros(4)
        trial[2] = v
        return sk_scores(labels, np.argmax(np.log(p) + trial, 1))[2][2]

    assert recall_of_class(value) >= 0.8 > recall_of_class(value - 0.25)
    # A target class without validation cells gets no bias.
    record = learn_rule(p, labels, "class_recall", target=3, recall=0.8)
    assert record["bias"] == [0.0] * 4 and record["target_reached"] is False


# --- the overlap losses, against numpy --------------------------------------


def numpy_loss(kind, p, y, w, alpha=0.5, beta=0.5):
    """Cross-entropy (Keras's reduction) plus the mean overlap term over the
    classes with labelled cells; Lovasz by Berman et al.'s Algorithm 1."""
    labelled = w > 0
    p_true = np.take_along_axis(p, y[..., None], -1)[..., 0]
    total = (-np.log(p_true) * w).sum() / w.size
    terms = []
    for c in range(p.shape[-1]):
        truth = ((y == c) & labelled)[labelled].astype(float)
        if not truth.any():
            continue
        pc = p[..., c][labelled]
        if kind == "tversky":
            tp = (pc * truth).sum()
            fp = (pc * (1 - truth)).sum()
            fn = ((1 - pc) * truth).sum()
            terms.append(1 - (tp + 1) / (tp + alpha * fp + beta * fn + 1))
        else:
            errors = np.abs(truth - pc)
            order = np.argsort(-errors, kind="stable")
            e, g = errors[order], truth[order]
            jaccard = 1 - (g.sum() - np.cumsum(g)) / (g.sum() + np.cumsum(1 - g))
            terms.append((e * np.diff(jaccard, prepend=0.0)).sum())
    return total + np.mean(terms)


LOSS_CHECK = """
import json, sys
import numpy as np
sys.path.insert(0, {lib!r})
import builtins
builtins._ = str
from iann.nn.losses import make_loss
data = np.load({data!r})
print(json.dumps({{name: float(make_loss(name, 2.0)(data["y"], data["p"], data["w"]))
                  for name in ("dice", "tversky", "lovasz")}}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_overlap_losses_equal_numpy(backend, tmp_path):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 6, 6, 4))
    p = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, 3, size=(3, 6, 6)).astype(np.int32)
    w = ((rng.random((3, 6, 6)) > 0.25) * rng.choice([0.5, 2.0], (3, 6, 6))).astype(
        np.float32
    )
    np.savez(tmp_path / "data.npz", p=p, y=y, w=w)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOSS_CHECK.format(lib=str(REPO / "lib"), data=str(tmp_path / "data.npz")),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, KERAS_BACKEND=backend),
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    p64 = p.astype(np.float64)
    assert got["dice"] == pytest.approx(numpy_loss("tversky", p64, y, w), rel=1e-5)
    assert got["tversky"] == pytest.approx(
        numpy_loss("tversky", p64, y, w, 0.3, 0.7), rel=1e-5
    )
    assert got["lovasz"] == pytest.approx(numpy_loss("lovasz", p64, y, w), rel=1e-5)


@pytest.mark.parametrize("loss", ["dice", "lovasz"])
def test_overlap_loss_trains_and_its_bundle_loads(synthetic_patches, tmp_path, loss):
    import keras

    from iann.nn.losses import CrossEntropyWithOverlap

    train_bundle(synthetic_patches, tmp_path / "m", filters=4, epochs=3, loss=loss)
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    history = meta["training"]["history"]["loss"]
    assert meta["training"]["loss"] == loss and history[-1] < history[0]
    model = keras.saving.load_model(tmp_path / "m" / "model.keras")
    assert isinstance(model.loss, CrossEntropyWithOverlap)
    assert model.loss.overlap == ("lovasz" if loss == "lovasz" else "tversky")


def test_rule_learnt_anew_for_an_existing_bundle(
    thin_bundle, synthetic_patches, tmp_path
):
    """i.ann.train decide=: a class_recall rule on the bundle's validation
    patches, checked against Keras' probabilities and scikit-learn; an
    existing rule kept without --overwrite; decision=argmax removes it."""
    import shutil

    import keras
    from sklearn.metrics import recall_score

    source, bands, _messages = thin_bundle
    bundle = tmp_path / "model"
    shutil.copytree(source, bundle)
    patches = source.parent / "patches"
    before = (bundle / "metadata.json").read_bytes()
    options = dict(
        decide=bundle,
        input=patches,
        decision="class_recall",
        decision_class=THIN,
        decision_recall=0.9,
    )
    assert_fails(run("i.ann.train", **options), str(bundle), "--overwrite")
    assert (bundle / "metadata.json").read_bytes() == before
    assert_fails(
        run("i.ann.train", "overwrite", **dict(options, input=synthetic_patches)),
        "has no band <thin_b1",
    )
    assert (bundle / "metadata.json").read_bytes() == before
    run_ok("i.ann.train", "overwrite", **options)
    metadata = json.loads((bundle / "metadata.json").read_text())
    decision = metadata["decision"]
    assert decision["rule"] == "class_recall" and decision["target_class"] == 2
    bias = np.array(decision["bias"])
    assert bias[0] == bias[1] == 0 and bias[2] > 0
    # The oracle: Keras' probabilities of the standardised validation
    # patches, scikit-learn's recall of the thin class with that bias.
    model = keras.saving.load_model(bundle / "model.keras", compile=False)
    images = np.load(patches / "validation_images.npy").astype(np.float32)
    labels = np.load(patches / "validation_labels.npy")
    mean = np.array(metadata["normalisation"]["mean"], np.float32)
    std = np.array(metadata["normalisation"]["std"], np.float32)
    p = model.predict((images - mean) / std, verbose=0)[labels != 255]
    truth = labels[labels != 255]

    def recall(value):
        predicted = np.argmax(np.log(p) + [0, 0, value], -1)
        return recall_score(truth, predicted, labels=[2], average=None)[0]

    assert recall(bias[2]) >= 0.9 > recall(bias[2] - 0.25)
    assert decision["tuned"]["recall"][2] == pytest.approx(recall(bias[2]), abs=1e-3)
    # decision=argmax takes the rule out: the map is that of -a.
    run_ok("i.ann.train", "overwrite", decide=bundle, input=patches, decision="argmax")
    assert "decision" not in json.loads((bundle / "metadata.json").read_text())
    gs.run_command("g.mapset", mapset="thin_classes", quiet=True)
    run_ok("i.ann.classify", input=",".join(bands), model=bundle, output="no_rule")
    run_ok("i.ann.classify", "a", input=",".join(bands), model=source, output="a_rule")
    np.testing.assert_array_equal(read_map("no_rule"), read_map("a_rule"))
