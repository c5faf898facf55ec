"""i.ann.train: a real (tiny) training, the bundle it writes, bad input."""

import json

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


def test_same_seed_same_weights(mapset, tmp_path):
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
    for name in ("a", "b"):
        run_ok(
            "i.ann.train",
            input=tmp_path / "p",
            output=tmp_path / name,
            filters=4,
            epochs=1,
            batch_size=4,
            seed=5,
        )
    a = keras.saving.load_model(tmp_path / "a" / "model.keras").get_weights()
    b = keras.saving.load_model(tmp_path / "b" / "model.keras").get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


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
