"""i.ann.train: a real (tiny) training, the bundle it writes, bad input."""

import json
import shutil

import numpy as np
import pytest

from conftest import (
    assert_fails,
    make_synthetic,
    read_map,
    run,
    run_ok,
    train_bundle,
)


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
    # The device line, against the devices TensorFlow itself reports.
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    line = [x for x in result.stderr.splitlines() if x.startswith("Training <")][0]
    if gpus:
        assert "backend on CPU" not in line and "gpu" in line.lower(), line
    else:
        assert line.endswith("tensorflow backend on CPU"), line
    assert "Traceback" not in result.stderr
    # Each epoch's message on a line of its own (no "8%Epoch 2/12").
    epochs = [line for line in result.stderr.splitlines() if "Epoch " in line]
    assert len(epochs) == 2 and all(line.startswith("Epoch ") for line in epochs)


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
            epochs=2,
            batch_size=4,
            seed=seed,
        )
    a, b, c = (
        keras.saving.load_model(tmp_path / name / "model.keras", compile=False)
        for name in "abc"
    )
    # The same seed and settings give bit-identical weights, another seed
    # others.
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    kernel = a.get_layer("block1a_conv").get_weights()[0]
    assert not np.allclose(kernel, c.get_layer("block1a_conv").get_weights()[0])
    # ... and the same class maps (the engines are deterministic too).
    for name in "ab":
        run_ok(
            "i.ann.classify",
            input=",".join(bands),
            model=tmp_path / name,
            output="map_" + name,
        )
    np.testing.assert_array_equal(read_map("map_a"), read_map("map_b"))


def test_optimizer_is_the_one_asked_for(synthetic_patches, tmp_path):
    import keras

    expected = {
        "adam": ("Adam", {}),
        "adamw": ("AdamW", {"weight_decay": 0.004}),
        "sgd": ("SGD", {"momentum": 0.9, "nesterov": True}),
    }
    weights = {}
    for name in expected:
        # learning_rate 0.01, batch_size 8, seed 1: train_bundle's.
        train_bundle(
            synthetic_patches, tmp_path / name, filters=4, epochs=1, optimizer=name
        )
        meta = json.loads((tmp_path / name / "metadata.json").read_text())
        assert meta["training"]["optimizer"] == name
        # The oracle: the optimizer Keras saved with the compiled model.
        model = keras.saving.load_model(tmp_path / name / "model.keras")
        kind, config = expected[name]
        assert type(model.optimizer).__name__ == kind
        saved = model.optimizer.get_config()
        assert saved["learning_rate"] == pytest.approx(0.01)
        for key, value in config.items():
            assert saved[key] == pytest.approx(value), (name, key)
        weights[name] = model.get_layer("block1a_conv").get_weights()[0]
    # Same seed, same first weights: the optimizers took other steps.
    assert not np.allclose(weights["adam"], weights["adamw"])
    assert not np.allclose(weights["adam"], weights["sgd"])


def test_kept_weights_are_the_moving_average(synthetic_patches, tmp_path):
    import keras

    from iann.nn.architectures import build_model

    moved, weights = {}, {}
    for name, ema in (("plain", 0), ("slow", 0.999999), ("default", 0.99)):
        # learning_rate 0.01, batch_size 8, seed 1: train_bundle's.
        train_bundle(synthetic_patches, tmp_path / name, filters=4, epochs=2, ema=ema)
        meta = json.loads((tmp_path / name / "metadata.json").read_text())
        assert meta["training"]["ema"] == ema
        model = keras.saving.load_model(tmp_path / name / "model.keras")
        weights[name] = model.get_weights()
        # The oracle: the network as seed 1 built it, before any step. An
        # average whose momentum is all but 1 stays at the weights after the
        # first step (Keras starts the average there), and a first Adam step
        # moves each weight by at most the learning rate.
        keras.utils.set_random_seed(1)
        initial = build_model(
            meta["architecture"],
            (None, None, len(meta["bands"])),
            len(meta["classes"]),
            **meta["parameters"],
        )
        moved[name] = max(
            float(np.abs(a.numpy() - b.numpy()).max())
            for a, b in zip(model.trainable_weights, initial.trainable_weights)
        )
    assert 0 < moved["slow"] <= 0.0101, moved
    assert moved["plain"] > 0.05, moved
    assert not all(
        np.allclose(a, b) for a, b in zip(weights["plain"], weights["default"])
    )


def test_validation_metrics_per_epoch_and_monitor(synthetic_patches, tmp_path):
    import keras
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    result = run_ok(
        "i.ann.train",
        input=synthetic_patches,
        output=tmp_path / "m",
        filters=4,
        epochs=4,
        batch_size=8,
        learning_rate=0.01,
        monitor="val_kappa",
        schedule="cosine",
    )
    assert "val_kappa=" in result.stderr and "val_macro_f1=" in result.stderr
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    history = meta["training"]["history"]
    keys = ["val_overall_accuracy", "val_kappa", "val_macro_f1"]
    keys += ["val_f1_{}".format(v) for v in (11, 21, 31)]
    assert all(len(history[key]) == 4 for key in keys)
    # The kept epoch is the one of the highest validation kappa.
    assert meta["training"]["monitor"] == "val_kappa"
    best = meta["training"]["best_epoch"]
    assert history["val_kappa"][best - 1] == max(history["val_kappa"])
    # Oracle: scikit-learn on the validation cells, with the kept network.
    images = np.load(synthetic_patches / "validation_images.npy").astype(np.float32)
    labels = np.load(synthetic_patches / "validation_labels.npy")
    norm = meta["normalisation"]
    x = (images - np.array(norm["mean"])) / np.array(norm["std"])
    model = keras.saving.load_model(tmp_path / "m" / "model.keras", compile=False)
    predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
    keep = labels != 255
    truth, predicted = labels[keep], predicted[keep]
    expected = {
        "val_overall_accuracy": accuracy_score(truth, predicted),
        "val_kappa": cohen_kappa_score(truth, predicted),
        "val_macro_f1": f1_score(
            truth,
            predicted,
            labels=sorted(set(truth) | set(predicted)),
            average="macro",
        ),
    }
    per_class = f1_score(truth, predicted, labels=[0, 1, 2], average=None)
    for index, value in enumerate((11, 21, 31)):
        expected["val_f1_{}".format(value)] = per_class[index]
    for key, value in expected.items():
        assert abs(history[key][best - 1] - value) < 2e-3, key
    # schedule=cosine: warm-up over epoch 1, then 0.01 (1 + cos(pi t)) / 2
    # over epochs 2 to 4 (t = 1/3, 2/3, 1).
    expected_rates = [0.01] + [0.005 * (1 + np.cos(np.pi * t / 3)) for t in (1, 2, 3)]
    np.testing.assert_allclose(history["learning_rate"], expected_rates, atol=1e-6)
    assert meta["training"]["schedule"] == "cosine"


def test_monitor_without_validation_patches_falls_back(mapset, tmp_path):
    bands, reference = make_synthetic()
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "p",
        size=8,
        number=12,
        validation=0,
    )
    result = run_ok(
        "i.ann.train",
        input=tmp_path / "p",
        output=tmp_path / "m",
        filters=4,
        epochs=1,
        batch_size=4,
        monitor="val_macro_f1",
    )
    message = " ".join(result.stderr.split())
    assert "no validation patches: val_macro_f1 cannot be computed" in message
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["training"]["monitor"] == "loss"
    assert_fails(
        run("i.ann.train", input=tmp_path / "p", output=tmp_path / "n", monitor="oa"),
        "monitor",
        "oa",
    )


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

    for ema in (1, -0.5):
        assert_fails(
            run("i.ann.train", input=tmp_path / "p", output=tmp_path / "m", ema=ema),
            "ema=",
            "below 1",
        )
    assert not (tmp_path / "m").exists()


def damaged_copy(dataset, folder, damage):
    """A copy of a dataset with `damage` done to its arrays (valid .npy headers)."""
    shutil.copytree(dataset, folder)
    arrays = {p.name: np.load(p) for p in folder.glob("*.npy")}
    meta = json.loads((folder / "metadata.json").read_text())
    damage(arrays, meta)
    for name, array in arrays.items():
        np.save(folder / name, array)
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def label_outside_classes(arrays, meta):
    arrays["train_labels.npy"][0, 0, 0] = 72


def images_of_another_type(arrays, meta):
    arrays["train_images.npy"] = arrays["train_images.npy"].astype(np.float64)


def a_nan_in_float_images(arrays, meta):
    meta["image_dtype"] = "float32"
    for name in ("train_images.npy", "validation_images.npy"):
        arrays[name] = arrays[name].astype(np.float32)
    arrays["validation_images.npy"][-1, 0, 0, 0] = np.nan


@pytest.mark.parametrize(
    "damage, damaged_file, fragment",
    [
        (label_outside_classes, "train_labels.npy", "label 72"),
        (images_of_another_type, "train_images.npy", "float64"),
        (a_nan_in_float_images, "validation_images.npy", "NaN"),
    ],
)
def test_damaged_dataset_is_named_and_leaves_nothing(
    synthetic_patches, tmp_path, damage, damaged_file, fragment
):
    """Each damage is found where the dataset is read: no traceback, no bundle,
    no checkpoint folder."""
    dataset = damaged_copy(synthetic_patches, tmp_path / "patches", damage)
    output = tmp_path / "model"
    result = run("i.ann.train", input=dataset, output=output, filters=2, epochs=1)
    assert_fails(result, str(dataset / damaged_file), fragment)
    assert not output.exists()
    assert not (tmp_path / "model.checkpoint").exists()


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
