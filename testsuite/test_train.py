"""i.ann.train: a real (tiny) training, the bundle it writes, bad input."""

import json
import shutil

import numpy as np

from conftest import assert_fails, make_synthetic, run, run_ok


def test_bundle_contents(trained_bundle):
    meta = json.loads((trained_bundle / "metadata.json").read_text())
    assert (trained_bundle / "model.keras").is_file()
    assert meta["format"] == "i.ann.model"
    assert meta["architecture"] == "fcn"
    assert [c["value"] for c in meta["classes"]] == [11, 21, 31]
    assert len(meta["bands"]) == 2
    assert len(meta["normalisation"]["mean"]) == 2
    history = meta["training"]["history"]
    assert len(history["loss"]) == 8
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history)
    # The network learns: the loss falls and the kept epoch is the best one.
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    best = meta["training"]["best_epoch"]
    assert history["val_loss"][best - 1] == min(history["val_loss"])
    # Two 5x5 and five 3x3 convolutions dilated by 2 (+8 and +4 cells each)
    # and seven 3x3 stride-1 poolings (+2 each): 1 + 2*8 + 5*4 + 7*2 = 51.
    assert meta["receptive_field"] == 51
    assert meta["margin"] == 25


def test_training_messages(mapset, tmp_path):
    bands, reference = make_synthetic()
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "p",
        size=8,
        number=20,
    )
    result = run_ok(
        "i.ann.train",
        input=tmp_path / "p",
        output=tmp_path / "m",
        filters=4,
        epochs=2,
        batch_size=4,
    )
    assert "Epoch 1/2: loss=" in result.stderr
    assert "Epoch 2/2: loss=" in result.stderr and "val_accuracy=" in result.stderr
    assert "CPU" in result.stderr or "GPU" in result.stderr
    assert "Traceback" not in result.stderr


def test_seed_decides_the_weights(mapset, tmp_path):
    import keras

    bands, reference = make_synthetic()
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "p",
        size=8,
        number=16,
    )
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        run_ok(
            "i.ann.train",
            input=tmp_path / "p",
            output=tmp_path / name,
            filters=4,
            epochs=1,
            batch_size=4,
            seed=seed,
        )
    a, b, c = (
        keras.saving.load_model(tmp_path / name / "model.keras", compile=False)
        for name in "abc"
    )
    # The same seed and settings give the same weights, another seed others.
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    kernel = a.get_layer("block1a_conv").get_weights()[0]
    assert not np.allclose(kernel, c.get_layer("block1a_conv").get_weights()[0])


def test_bad_input(mapset, tmp_path, trained_bundle):
    assert_fails(
        run("i.ann.train", input=tmp_path / "missing", output=tmp_path / "m"),
        str(tmp_path / "missing"),
    )
    not_a_dataset = tmp_path / "folder"
    not_a_dataset.mkdir()
    assert_fails(
        run("i.ann.train", input=not_a_dataset, output=tmp_path / "m"),
        str(not_a_dataset),
        "i.ann.patches",
    )
    assert not (tmp_path / "m").exists()

    bands, reference = make_synthetic()
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "p",
        size=8,
        number=8,
    )
    existing = tmp_path / "existing"
    existing.mkdir()
    assert_fails(
        run("i.ann.train", input=tmp_path / "p", output=existing, filters=4, epochs=1),
        str(existing),
        "overwrite",
    )
    assert list(existing.iterdir()) == []


UNSAVEABLE = """
import keras
from keras import layers


class Unsaveable(layers.Layer):
    def call(self, x):
        return 2.0 * x

    def get_config(self):
        raise RuntimeError("this layer cannot be saved")


def build_model(input_shape, n_classes):
    inputs = keras.Input(shape=(None, None, input_shape[-1]))
    x = layers.Conv2D(2, 3, padding="same")(Unsaveable()(inputs))
    outputs = layers.Conv2D(n_classes, 1, activation="softmax")(x)
    return keras.Model(inputs, outputs)
"""


def test_failed_overwrite_keeps_the_old_bundle(
    synthetic_patches, trained_bundle, tmp_path
):
    # The bundle is written to a temporary folder that replaces the old one
    # only once complete: a run that fails after training (here, saving a
    # network with a layer Keras cannot save) leaves the old bundle as it was.
    output = tmp_path / "model"
    shutil.copytree(trained_bundle, output)
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    architecture = tmp_path / "unsaveable.py"
    architecture.write_text(UNSAVEABLE)
    result = run(
        "i.ann.train",
        "overwrite",
        input=synthetic_patches,
        output=output,
        architecture=architecture,
        epochs=1,
        batch_size=8,
    )
    assert result.returncode != 0
    assert "Epoch 1/1" in result.stderr
    assert "this layer cannot be saved" in result.stderr
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]
