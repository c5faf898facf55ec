"""i.ann.train: architectures, custom files, bands, fine-tuning, resume, losses."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

import grass.script as gs

from conftest import assert_fails, make_synthetic, read_map, run, run_ok


def assert_class_map(name):
    """The map holds the synthetic classes only, and at least two of them.

    An all-NULL map, or one of a single class, would pass a subset check.
    """
    values = set(np.unique(read_map(name, null=0)).tolist())
    assert values <= {0, 11, 21, 31}
    assert len(values - {0}) >= 2, values


def metadata_of(bundle):
    return json.loads((bundle / "metadata.json").read_text())


def load_model(bundle):
    import keras

    return keras.saving.load_model(bundle / "model.keras", compile=False)


@pytest.mark.parametrize(
    "architecture,options",
    [
        ("fcn", {"filters": 4}),
        ("unet", {"filters": 4, "depth": 2}),
        ("resunet", {"filters": 4, "depth": 3}),
    ],
)
def test_architecture_learns_and_its_field_is_measured(
    synthetic_patches, tmp_path, architecture, options
):
    from iann.nn.receptive_field import measured_reach

    run_ok(
        "i.ann.train",
        input=synthetic_patches,
        output=tmp_path / "m",
        architecture=architecture,
        epochs=3,
        batch_size=8,
        learning_rate=0.01,
        **options,
    )
    meta = metadata_of(tmp_path / "m")
    loss = meta["training"]["history"]["loss"]
    assert loss[-1] < loss[0]
    assert meta["architecture"] == architecture
    assert meta["parameters"]["filters"] == 4
    # The field computed from the layer graph equals the one measured by
    # perturbing single input cells at every alignment to the poolings.
    multiple = 2 ** options.get("depth", 0)
    assert meta["size_multiple"] == multiple
    assert meta["receptive_field_method"] == "computed"
    reach = measured_reach(load_model(tmp_path / "m"), 2, multiple)
    assert meta["receptive_field"] == 2 * reach + 1
    assert meta["margin"] >= reach and meta["margin"] % multiple == 0


CUSTOM = """
import keras
from keras import layers


def build_model(input_shape, n_classes, width=4, extra_channels=0):
    inputs = keras.Input(shape=(None, None, input_shape[-1]))
    x = layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(width, 5, padding="same", activation="relu")(x)
    outputs = layers.Conv2D(n_classes + extra_channels, 1, activation="softmax")(x)
    return keras.Model(inputs, outputs)
"""


def test_custom_architecture_file(mapset, synthetic_patches, tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(CUSTOM)
    run_ok(
        "i.ann.train",
        input=synthetic_patches,
        output=tmp_path / "m",
        architecture=path,
        params="width=6",
        epochs=2,
        batch_size=8,
    )
    meta = metadata_of(tmp_path / "m")
    assert meta["parameters"] == {"width": 6}
    assert meta["receptive_field"] == 7  # 3x3 then 5x5: 1 + 2 + 4
    assert (tmp_path / "m" / "architecture.py").read_text() == CUSTOM
    model = load_model(tmp_path / "m")
    assert model.layers[1].filters == 6
    bands, _ = make_synthetic()
    run_ok("i.ann.classify", input=",".join(bands), model=tmp_path / "m", output="c")
    assert_class_map("c")

    wrong = tmp_path / "wrong.py"
    wrong.write_text(CUSTOM.replace("extra_channels=0", "extra_channels=1"))
    assert_fails(
        run(
            "i.ann.train",
            input=synthetic_patches,
            output=tmp_path / "w",
            architecture=wrong,
        ),
        str(wrong),
        "(1, 16, 16, 4)",
        "(1, 16, 16, 3)",
    )
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert_fails(
        run(
            "i.ann.train",
            input=synthetic_patches,
            output=tmp_path / "w",
            architecture=empty,
        ),
        str(empty),
        "build_model",
    )
    assert_fails(
        run(
            "i.ann.train",
            input=synthetic_patches,
            output=tmp_path / "w",
            architecture=path,
            params="depth=2",
        ),
        "depth",
    )
    assert not (tmp_path / "w").exists()


def test_bands_subset(mapset, synthetic_patches, tmp_path):
    run_ok(
        "i.ann.train",
        input=synthetic_patches,
        output=tmp_path / "m",
        bands="s_b2",
        filters=4,
        epochs=1,
    )
    meta = metadata_of(tmp_path / "m")
    assert [b["name"].split("@")[0] for b in meta["bands"]] == ["s_b2"]
    data = json.loads((synthetic_patches / "metadata.json").read_text())
    assert meta["normalisation"]["mean"] == pytest.approx(
        [data["statistics"]["mean"][1]]
    )
    assert load_model(tmp_path / "m").inputs[0].shape[-1] == 1
    make_synthetic()
    run_ok("i.ann.classify", input="s_b2", model=tmp_path / "m", output="c")
    assert_fails(
        run("i.ann.classify", input="s_b1,s_b2", model=tmp_path / "m", output="c2"),
        "1 bands",
    )
    assert_fails(
        run("i.ann.train", input=synthetic_patches, output=tmp_path / "w", bands="nir"),
        "nir",
        "s_b1",
    )


def test_fine_tuning_copies_the_classes_it_knew(mapset, trained_bundle, tmp_path):
    bands, reference = make_synthetic()
    # Class 11 is one the pretrained model knew (its first), 41 a new one.
    gs.mapcalc("two = if({} == 11, 11, 41)".format(reference), quiet=True)
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference="two",
        output=tmp_path / "p",
        size=16,
        number=30,
    )
    # A learning rate too small to move the weights shows them as copied.
    run_ok(
        "i.ann.train",
        input=tmp_path / "p",
        output=tmp_path / "tuned",
        pretrained=trained_bundle,
        freeze="block*",
        epochs=1,
        batch_size=8,
        learning_rate=1e-12,
    )
    meta = metadata_of(tmp_path / "tuned")
    assert [c["value"] for c in meta["classes"]] == [11, 41]
    assert meta["architecture"] == "fcn"
    assert {"block1a_conv", "head_conv"} <= set(meta["training"]["layers_copied"])
    tuned, original = load_model(tmp_path / "tuned"), load_model(trained_bundle)
    assert tuned.get_layer("head_conv").filters == 2
    # Frozen layers keep the pretrained weights.
    for name in ("block1a_conv", "block24_bn"):
        for a, b in zip(
            tuned.get_layer(name).get_weights(), original.get_layer(name).get_weights()
        ):
            np.testing.assert_array_equal(a, b)
    # The head's column of class 11 is the pretrained one; that of 41 is new.
    for new, old in zip(
        tuned.get_layer("head_conv").get_weights(),
        original.get_layer("head_conv").get_weights(),
    ):
        np.testing.assert_allclose(new[..., 0], old[..., 0], rtol=0, atol=1e-7)
        for column in range(3):
            assert not np.allclose(new[..., 1], old[..., column])

    # Without freezing, the copied layers are trained too.
    run_ok(
        "i.ann.train",
        input=tmp_path / "p",
        output=tmp_path / "free",
        pretrained=trained_bundle,
        epochs=1,
    )
    free = load_model(tmp_path / "free").get_layer("block1a_conv").get_weights()[0]
    assert not np.array_equal(free, original.get_layer("block1a_conv").get_weights()[0])

    assert_fails(
        run(
            "i.ann.train",
            input=tmp_path / "p",
            output=tmp_path / "w",
            pretrained=trained_bundle,
            bands="1",
        ),
        str(trained_bundle),
        "2 bands",
    )
    assert_fails(
        run(
            "i.ann.train",
            input=tmp_path / "p",
            output=tmp_path / "w",
            pretrained=tmp_path / "nothing",
        ),
        str(tmp_path / "nothing"),
    )
    assert not (tmp_path / "w").exists()


def test_unet_patch_size_must_fit_depth(synthetic_patches, tmp_path):
    assert_fails(
        run(
            "i.ann.train",
            input=synthetic_patches,
            output=tmp_path / "w",
            architecture="unet",
            depth=5,
        ),
        "multiple of 32",
        "16 cells",
    )
    assert not (tmp_path / "w").exists()


def train_losses(patches, tmp_path, name, **options):
    """First-epoch training loss of a run that does not change the weights."""
    run_ok(
        "i.ann.train",
        input=patches,
        output=tmp_path / name,
        filters=4,
        epochs=1,
        batch_size=8,
        learning_rate=1e-12,
        seed=3,
        **options,
    )
    return metadata_of(tmp_path / name)["training"]["history"]["loss"][0]


def test_class_weights_and_focal_loss(synthetic_patches, tmp_path):
    # With the weights unchanged by training, the loss is linear in the class
    # weights: sum over classes of weight x (the loss of that class alone).
    per_class = []
    for value in (11, 21, 31):
        weights = tmp_path / "w{}.txt".format(value)
        weights.write_text(
            "".join("{} {}\n".format(v, int(v == value)) for v in (11, 21, 31))
        )
        per_class.append(
            train_losses(synthetic_patches, tmp_path, str(value), class_weight=weights)
        )
    plain = train_losses(synthetic_patches, tmp_path, "plain")
    assert plain == pytest.approx(sum(per_class), rel=1e-4)
    balanced = train_losses(
        synthetic_patches, tmp_path, "balanced", class_weight="balanced"
    )
    weights = metadata_of(tmp_path / "balanced")["training"]["class_weights"]
    counts = np.array(
        json.loads((synthetic_patches / "metadata.json").read_text())["counts"][
            "train"
        ]["pixels_per_class"],
        dtype=float,
    )
    np.testing.assert_allclose(weights, counts.sum() / (3 * counts), rtol=1e-5)
    assert balanced == pytest.approx(np.dot(weights, per_class), rel=1e-4)
    # Focal loss with gamma 0 is the cross-entropy; gamma 2 shrinks it.
    focal0 = train_losses(synthetic_patches, tmp_path, "f0", loss="focal", gamma=0)
    focal2 = train_losses(synthetic_patches, tmp_path, "f2", loss="focal", gamma=2)
    assert focal0 == pytest.approx(plain, rel=1e-4)
    assert focal2 < 0.9 * plain
    # The focal loss is registered with Keras: its bundle loads compiled.
    import keras

    from iann.nn.losses import SparseFocalLoss

    model = keras.saving.load_model(tmp_path / "f2" / "model.keras")
    assert isinstance(model.loss, SparseFocalLoss) and model.loss.gamma == 2

    bad = tmp_path / "bad.txt"
    bad.write_text("11 1\n21 1\n")
    assert_fails(
        run(
            "i.ann.train",
            input=synthetic_patches,
            output=tmp_path / "x",
            class_weight=bad,
        ),
        str(bad),
        "31",
    )


def test_resume_after_kill_equals_uninterrupted(mapset, tmp_path):
    bands, reference = make_synthetic()
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "p",
        size=16,
        number=400,
    )
    options = dict(input=tmp_path / "p", filters=8, epochs=4, batch_size=8, seed=7)
    args = ["{}={}".format(k, v) for k, v in options.items()]
    subprocess.run(
        ["i.ann.train", "output={}".format(tmp_path / "whole")] + args,
        check=True,
        capture_output=True,
    )
    output = tmp_path / "resumed"
    checkpoint = tmp_path / "resumed.checkpoint"
    process = subprocess.Popen(
        ["i.ann.train", "output={}".format(output)] + args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (checkpoint / "state.json").exists() and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists(), "training ended before it could be killed"
    state = json.loads((checkpoint / "state.json").read_text())
    assert 1 <= state["epochs_done"] < 4
    result = run_ok("i.ann.train", "r", output=output, **options)
    assert "Resuming from epoch {}".format(state["epochs_done"]) in result.stderr
    assert not checkpoint.exists()
    whole, resumed = metadata_of(tmp_path / "whole"), metadata_of(output)
    assert resumed["training"]["epochs_run"] == 4
    np.testing.assert_allclose(
        resumed["training"]["history"]["loss"],
        whole["training"]["history"]["loss"],
        rtol=1e-4,
    )
    assert resumed["training"]["best_epoch"] == whole["training"]["best_epoch"]
    for a, b in zip(
        load_model(output).get_weights(), load_model(tmp_path / "whole").get_weights()
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # -r with nothing to resume is refused.
    assert_fails(
        run("i.ann.train", "r", output=tmp_path / "other", **options),
        "no checkpoint",
        str(tmp_path / "other.checkpoint"),
    )


def test_plot_and_early_stopping(synthetic_patches, tmp_path):
    result = run_ok(
        "i.ann.train",
        input=synthetic_patches,
        output=tmp_path / "m",
        filters=4,
        epochs=30,
        batch_size=8,
        learning_rate=0.05,
        patience=2,
        # The last step's weights: at this rate their validation loss
        # stalls within a few epochs, where the average's keeps falling.
        ema=0,
        plot=tmp_path / "curves.png",
    )
    meta = metadata_of(tmp_path / "m")["training"]
    epochs_run = meta["epochs_run"]
    assert epochs_run < 30 and meta["stopped_early"]
    assert "has not improved for 2 epochs" in result.stderr
    assert epochs_run == meta["best_epoch"] + 2
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"keep")
    assert_fails(
        run(
            "i.ann.train",
            input=synthetic_patches,
            output=tmp_path / "m2",
            plot=existing,
        ),
        str(existing),
        "overwrite",
    )
    assert existing.read_bytes() == b"keep"


def test_second_backend_jax(mapset, synthetic_patches, tmp_path):
    """The model and loss code runs under JAX; TensorFlow classifies with it."""
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run(
        [
            "i.ann.train",
            "input={}".format(synthetic_patches),
            "output={}".format(tmp_path / "m"),
            "filters=4",
            "epochs=2",
            "loss=focal",
            "augmentation=dihedral",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "jax backend" in result.stderr
    meta = metadata_of(tmp_path / "m")
    assert meta["software"]["backend"] == "jax"
    loss = meta["training"]["history"]["loss"]
    assert loss[-1] < loss[0]
    bands, _ = make_synthetic()
    run_ok("i.ann.classify", input=",".join(bands), model=tmp_path / "m", output="c")
    assert_class_map("c")
