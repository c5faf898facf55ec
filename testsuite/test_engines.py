"""model.onnx in the bundle, and the engines of i.ann.classify.

Every engine must give the probabilities of the bundle's Keras model
(within 1e-5) and the same class map; a model.onnx that is missing,
truncated or stale must never give a wrong map.
"""

import hashlib
import json
import re
import shutil

import numpy as np
import pytest

import grass.script as gs

from conftest import (
    assert_fails,
    make_synthetic,
    read_map,
    run,
    run_ok,
    train_bundle,
)

CUSTOM = """
import keras
from keras import layers


def build_model(input_shape, n_classes, width=4):
    inputs = keras.Input(shape=(None, None, input_shape[-1]))
    x = layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    x = layers.DepthwiseConv2D(5, padding="same")(x)
    outputs = layers.Conv2D(n_classes, 1, activation="softmax")(x)
    return keras.Model(inputs, outputs)
"""

# A layer the ONNX converter has no rule for (TensorFlow's Erfinv).
UNEXPORTABLE = """
import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="test")
class Odd(layers.Layer):
    def call(self, x):
        return x + 0.0 * ops.erfinv(ops.clip(x, -0.5, 0.5))


def build_model(input_shape, n_classes):
    inputs = keras.Input(shape=(None, None, input_shape[-1]))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = Odd()(x)
    outputs = layers.Conv2D(n_classes, 1, activation="softmax")(x)
    return keras.Model(inputs, outputs)
"""


def assert_classified(classes, null=-1):
    """A class map with data, in more than one class (not all NULL)."""
    assert (classes != null).sum() > 0, "the map is all NULL"
    assert len(np.unique(classes[classes != null])) >= 2, np.unique(classes)


def metadata_of(bundle):
    return json.loads((bundle / "metadata.json").read_text())


def test_bundle_carries_onnx_with_deepness_metadata(trained_bundle):
    import onnxruntime

    meta = metadata_of(trained_bundle)
    assert (trained_bundle / "model.onnx").is_file()
    assert meta["onnx"]["file"] == "model.onnx"
    # The export's record: the SHA-256 of the model.keras it was made from.
    digest = hashlib.sha256((trained_bundle / "model.keras").read_bytes()).hexdigest()
    assert meta["onnx"]["keras_sha256"] == digest
    session = onnxruntime.InferenceSession(
        str(trained_bundle / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    properties = {
        k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()
    }
    assert properties["model_type"] == "Segmentor"
    assert properties["class_names"] == {"0": "water", "1": "forest", "2": "urban"}
    # Deepness scales bands to 0..1 before standardising: x/255 then
    # (x/255 - m/255) / (s/255) is i.ann's (x - m) / s.
    np.testing.assert_allclose(
        np.array(properties["standardization_mean"]) * 255,
        meta["normalisation"]["mean"],
    )
    np.testing.assert_allclose(
        np.array(properties["standardization_std"]) * 255, meta["normalisation"]["std"]
    )
    assert properties["resolution"] == pytest.approx(3000.0)  # 30 m in cm
    assert properties["i.ann"]["classes"] == meta["classes"]
    # Each key Deepness reads, in the JSON type its getters take.
    types = {
        "model_type": str,
        "class_names": dict,
        "resolution": float,
        "tile_size": int,
        "tiles_size": int,
        "tiles_overlap": int,
        "seg_thresh": float,
        "seg_small_segment": int,
        "standardization_mean": list,
        "standardization_std": list,
    }
    for key, kind in types.items():
        assert type(properties[key]) is kind, (key, properties[key])
    assert all(type(v) is float for v in properties["standardization_mean"])
    assert all(type(v) is float for v in properties["standardization_std"])
    # Deepness takes its tile from the input, whose height and width must
    # be numbers; it keeps each tile but half its overlap on each side.
    margin = meta["margin"]
    tile = properties["tile_size"]
    assert tile == properties["tiles_size"] and tile % meta["size_multiple"] == 0
    assert int(tile * properties["tiles_overlap"] / 100) // 2 >= margin
    (inputs,) = session.get_inputs()
    assert inputs.shape == ["batch", 2, tile, tile]
    assert session.get_outputs()[0].shape == ["batch", 3, tile, tile]

    # Deepness's documented preprocessing of a uint8 tile: / 255, then
    # standardised, channels first; cells without data come as raw 0.
    import keras

    model = keras.saving.load_model(trained_bundle / "model.keras")
    rng = np.random.default_rng(3)
    raw = rng.integers(1, 256, size=(2, tile, tile, 2)).astype(np.uint8)
    raw[0, 100:140, 200:260, :] = 0  # no data, in every band
    raw[1, 10:20, 10:20, 0] = 0  # no data in one band
    scaled = raw.astype(np.float32) / 255.0
    x = (scaled - np.float32(properties["standardization_mean"])) / np.float32(
        properties["standardization_std"]
    )
    (got,) = session.run(None, {inputs.name: x.transpose(0, 3, 1, 2)})
    # i.ann's way: (x - mean) / std, no data as the band mean (0).
    mean = np.float32(meta["normalisation"]["mean"])
    std = np.float32(meta["normalisation"]["std"])
    standardised = (raw.astype(np.float32) - mean) / std
    standardised[0, 100:140, 200:260, :] = 0
    standardised[1, 10:20, 10:20, 0] = 0
    expected = np.asarray(model.predict_on_batch(standardised))
    np.testing.assert_allclose(got.transpose(0, 2, 3, 1), expected, atol=1e-4)

    # i.ann's own engines run the same file with free height and width and
    # without the no-data step: a band of 0 is data there.
    from iann.predict.engines import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(str(trained_bundle / "model.onnx"), 1)
    zeros = np.zeros((1, 30, 41, 2), np.float32)
    zeros[0, :, :20] = -mean / std  # raw 0
    np.testing.assert_allclose(
        engine.predict(zeros.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1),
        np.asarray(model.predict_on_batch(zeros)),
        atol=1e-5,
    )


@pytest.fixture(scope="module")
def architectures(synthetic_patches, trained_bundle, unet_bundle, tmp_path_factory):
    """Bundles of every kind of architecture (resunet and a file trained here)."""
    folder = tmp_path_factory.mktemp("architectures")
    custom = folder / "net.py"
    custom.write_text(CUSTOM)
    return {
        "fcn": trained_bundle,
        "unet": unet_bundle,
        "resunet": train_bundle(
            synthetic_patches,
            folder / "resunet",
            architecture="resunet",
            depth=2,
            filters=4,
            epochs=2,
        ),
        "custom": train_bundle(
            synthetic_patches, folder / "custom", architecture=custom, epochs=2
        ),
    }


@pytest.mark.parametrize("architecture", ["fcn", "unet", "resunet", "custom"])
def test_engines_give_the_keras_map(mapset, architectures, architecture):
    bundle = architectures[architecture]
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=45, cols=62)
    engines = (
        ("keras", "onnx", "openvino") if architecture == "fcn" else ("keras", "onnx")
    )
    for engine in engines:
        result = run_ok(
            "i.ann.classify",
            input=",".join(bands),
            model=bundle,
            output=engine,
            probabilities=engine + "_p",
            engine=engine,
            tile_size=32,
        )
        title = {"keras": "Keras", "onnx": "ONNX Runtime", "openvino": "OpenVINO"}
        assert "Engine: " + title[engine] in result.stderr
        # The class map alone: the engine takes each cell's class itself.
        run_ok(
            "i.ann.classify",
            input=",".join(bands),
            model=bundle,
            output=engine + "_alone",
            engine=engine,
            tile_size=32,
        )
        alone = read_map(engine + "_alone", null=-1, dtype=np.int32)
        # Oracle: the most probable class of the probability maps it wrote.
        stack = np.stack(
            [read_map("{}_p_{}".format(engine, v), null=np.nan) for v in (11, 21, 31)]
        )
        best = np.argmax(np.nan_to_num(stack, nan=-1.0), axis=0)
        expected = np.where(np.isnan(stack[0]), -1, np.array([11, 21, 31])[best])
        np.testing.assert_array_equal(alone, expected, err_msg=engine)
        np.testing.assert_array_equal(alone, read_map(engine, null=-1, dtype=np.int32))
    keras_map = read_map("keras", null=-1, dtype=np.int32)
    assert_classified(keras_map)
    for engine in engines[1:]:
        np.testing.assert_array_equal(
            keras_map, read_map(engine, null=-1, dtype=np.int32)
        )
        for value in (11, 21, 31):
            np.testing.assert_allclose(
                read_map("keras_p_{}".format(value)),
                read_map("{}_p_{}".format(engine, value)),
                atol=1e-5,
            )


def test_auto_engine_and_broken_onnx_fall_back_to_keras(
    mapset, trained_bundle, unet_bundle, tmp_path
):
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=30, cols=40)
    result = run_ok(
        "i.ann.classify", input=",".join(bands), model=trained_bundle, output="auto"
    )
    assert "Engine: OpenVINO on model.onnx" in " ".join(result.stderr.split())
    reference = read_map("auto", null=-1, dtype=np.int32)
    assert_classified(reference)

    def broken_copy(name, damage):
        bundle = tmp_path / name
        shutil.copytree(trained_bundle, bundle)
        damage(bundle)
        return bundle

    truncated = broken_copy(
        "truncated",
        lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:500]),
    )
    # model.onnx of another network: the probe tells them apart.
    other = broken_copy(
        "other",
        lambda b: shutil.copyfile(unet_bundle / "model.onnx", b / "model.onnx"),
    )
    stale = broken_copy(
        "stale",
        lambda b: (b / "model.keras").write_bytes(
            (b / "model.keras").read_bytes() + b"\0"
        ),
    )
    for bundle, why in (
        (truncated, "cannot be run"),
        (other, "disagrees with model.keras"),
        (stale, "exported from another model.keras"),
    ):
        for engine in ("auto", "onnx"):
            result = run_ok(
                "i.ann.classify",
                "overwrite",
                input=",".join(bands),
                model=bundle,
                output="fallback",
                engine=engine,
            )
            message = " ".join(result.stderr.split())
            assert "WARNING" in message and why in message, result.stderr
            assert "classifying with Keras" in message and "Engine: Keras" in message
            if bundle == truncated:
                # What the engine found, not where in its C++ sources.
                reason = re.search(
                    r"model\.onnx cannot be run: (.+?); classifying with Keras",
                    message,
                )
                assert reason and "src/" not in reason.group(1), message
                assert re.search(r"pars", reason.group(1), re.I), message
            np.testing.assert_array_equal(
                reference, read_map("fallback", null=-1, dtype=np.int32)
            )
    # model.onnx lost from a bundle whose metadata records it: warned.
    missing = broken_copy("missing", lambda b: (b / "model.onnx").unlink())
    result = run_ok(
        "i.ann.classify", input=",".join(bands), model=missing, output="no_onnx"
    )
    message = " ".join(result.stderr.split())
    assert "WARNING" in message and "the bundle has no model.onnx" in message
    assert "Engine: Keras" in message

    # A bundle from before model.onnx existed: Keras, without a warning.
    def unexported(bundle):
        (bundle / "model.onnx").unlink()
        meta = json.loads((bundle / "metadata.json").read_text())
        del meta["onnx"]
        (bundle / "metadata.json").write_text(json.dumps(meta))

    old = broken_copy("old", unexported)
    result = run_ok("i.ann.classify", input=",".join(bands), model=old, output="old")
    assert "WARNING: Bundle" not in result.stderr
    assert "Engine: Keras (the bundle has no model.onnx)" in " ".join(
        result.stderr.split()
    )
    np.testing.assert_array_equal(reference, read_map("old", null=-1, dtype=np.int32))


def test_engine_needs_its_package(mapset, trained_bundle, tmp_path):
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=20, cols=20)
    # A package that cannot be imported, as when it is not installed.
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    import os
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(shadow.parent)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    result = subprocess.run(
        [
            "i.ann.classify",
            "input=" + ",".join(bands),
            "model={}".format(trained_bundle),
            "output=x",
            "engine=onnx",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert_fails(result, "engine=onnx", "<onnxruntime>", "pip install onnxruntime")


def test_export_adds_onnx_to_a_bundle(
    mapset, trained_bundle, synthetic_patches, tmp_path
):
    bundle = tmp_path / "old"
    shutil.copytree(trained_bundle, bundle)
    (bundle / "model.onnx").unlink()
    meta = metadata_of(bundle)
    del meta["onnx"]
    (bundle / "metadata.json").write_text(json.dumps(meta))
    result = run_ok("i.ann.train", export=bundle)
    assert "Added model.onnx" in result.stderr
    assert (
        metadata_of(bundle)["onnx"]["probe_output"]
        == metadata_of(trained_bundle)["onnx"]["probe_output"]
    )
    assert_fails(run("i.ann.train", export=bundle), str(bundle), "--overwrite")
    run_ok("i.ann.train", "overwrite", export=bundle)
    assert_fails(run("i.ann.train", input=synthetic_patches, export=bundle), "export")
    # A network the converter cannot export: a warning, a Keras-only bundle.
    path = tmp_path / "odd.py"
    path.write_text(UNEXPORTABLE)
    result = run_ok(
        "i.ann.train",
        input=synthetic_patches,
        output=tmp_path / "odd",
        architecture=path,
        epochs=1,
        batch_size=8,
    )
    assert "WARNING" in result.stderr and "No model.onnx" in " ".join(
        result.stderr.split()
    )
    assert not (tmp_path / "odd" / "model.onnx").exists()
    assert "onnx" not in metadata_of(tmp_path / "odd")
    bands, _ = make_synthetic()
    result = run_ok(
        "i.ann.classify", input=",".join(bands), model=tmp_path / "odd", output="odd"
    )
    assert "Engine: Keras" in result.stderr


def test_mixed_precision(mapset, trained_bundle, synthetic_patches, tmp_path):
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=60, cols=80)
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="f32",
        engine="keras",
    )
    result = run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="bf16",
        precision="mixed_bfloat16",
    )
    assert "Engine: Keras (precision mixed_bfloat16)" in " ".join(result.stderr.split())
    f32 = read_map("f32", null=-1, dtype=np.int32)
    bf16 = read_map("bf16", null=-1, dtype=np.int32)
    assert_classified(f32)
    assert (f32 == bf16).mean() >= 0.995
    result = run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="f16",
        precision="mixed_float16",
        engine="keras",
    )
    assert "mixed_float16 needs a GPU" in " ".join(result.stderr.split())
    np.testing.assert_array_equal(f32, read_map("f16", null=-1, dtype=np.int32))
    assert_fails(
        run(
            "i.ann.classify",
            input=",".join(bands),
            model=trained_bundle,
            output="x",
            precision="mixed_bfloat16",
            engine="onnx",
        ),
        "precision=mixed_bfloat16 needs Keras",
    )
    for precision in ("mixed_bfloat16", "mixed_float16"):
        result = run_ok(
            "i.ann.train",
            input=synthetic_patches,
            output=tmp_path / precision,
            filters=4,
            epochs=1,
            batch_size=8,
            precision=precision,
        )
        meta = metadata_of(tmp_path / precision)
        if precision == "mixed_float16":
            assert "mixed_float16 needs a GPU" in " ".join(result.stderr.split())
            assert meta["training"]["precision"] == "float32"
        else:
            assert meta["training"]["precision"] == "mixed_bfloat16"
        import keras

        model = keras.saving.load_model(tmp_path / precision / "model.keras")
        assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}


def test_onnx_engines_use_the_cores_they_are_given(mapset, trained_bundle):
    """Threads follow the CPU affinity (taskset, SLURM) and nprocs' share."""
    import os
    import subprocess

    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=30, cols=40)
    cores = len(os.sched_getaffinity(0))
    first = min(os.sched_getaffinity(0))
    options = ["input=" + ",".join(bands), "model={}".format(trained_bundle)]
    for engine in ("onnx", "openvino"):
        pinned = subprocess.run(
            ["taskset", "-c", str(first), "i.ann.classify", "output=pinned_" + engine]
            + options
            + ["engine=" + engine],
            capture_output=True,
            text=True,
        )
        assert pinned.returncode == 0, pinned.stderr
        assert "1 thread per process" in " ".join(pinned.stderr.split())
        free = run_ok(
            "i.ann.classify",
            input=",".join(bands),
            model=trained_bundle,
            output="free_" + engine,
            engine=engine,
        )
        expected = (
            "1 thread per process"
            if cores == 1
            else "{} threads per process".format(cores)
        )
        assert expected in " ".join(free.stderr.split())
