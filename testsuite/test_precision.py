"""Reduced precisions (int8, bfloat16): made and checked by i.ann.train
(inference_precision=), used by i.ann.classify (precision=) only where the
bundle's check passed on this kind of CPU."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from sklearn.metrics import cohen_kappa_score

import grass.script as gs

from conftest import (
    REPO,
    assert_fails,
    read_map,
    run,
    run_ok,
    train_bundle,
)


def metadata_of(bundle):
    return json.loads((bundle / "metadata.json").read_text())


def cpu_flags():
    """This CPU's flags, read here from /proc/cpuinfo (the test's own oracle)."""
    for line in open("/proc/cpuinfo"):
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


NATIVE_BFLOAT16 = bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def blocky_scene():
    """Three classes (values 11, 21, 31) in blocks of 9 x 11 cells, each
    with its own levels of two bands and a little texture: a scene a small
    network maps with confidence but at the blocks' edges."""
    block = "(int(row() / 9) * 7 + int(col() / 11) * 3) % 3"
    gs.mapcalc(
        "pr_ref = if({b} == 0, 11, if({b} == 1, 21, 31))".format(b=block),
        overwrite=True,
        quiet=True,
    )
    gs.mapcalc(
        "pr_b1 = float(if(pr_ref == 11, 60, if(pr_ref == 21, 100, 140))"
        " + 4 * sin(row() * 123.7 + col() * 71.3))",
        overwrite=True,
        quiet=True,
    )
    gs.mapcalc(
        "pr_b2 = float(if(pr_ref == 21, 40, 80)"
        " + 4 * sin(row() * 47.9 - col() * 151.1))",
        overwrite=True,
        quiet=True,
    )
    return ["pr_b1", "pr_b2"], "pr_ref"


@pytest.fixture(scope="module")
def scene(grass_session, tmp_path_factory):
    """The scene's bands and a dataset of 16 x 16 patches of it."""
    gs.run_command("g.mapset", flags="c", mapset="precision", quiet=True)
    gs.run_command("g.region", n=1800, s=0, e=2400, w=0, res=30, quiet=True)
    bands, reference = blocky_scene()
    patches = tmp_path_factory.mktemp("precision") / "patches"
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=patches,
        size=16,
        number=120,
        seed=1,
    )
    yield bands, patches
    gs.run_command("g.mapset", mapset="PERMANENT", quiet=True)


@pytest.fixture(scope="module")
def scene_bands(scene):
    return scene[0]


@pytest.fixture(scope="module")
def scene_patches(scene):
    return scene[1]


@pytest.fixture(scope="module")
def int8_bundle(scene_patches, tmp_path_factory):
    """A small fcn trained with inference_precision=int8,bfloat16."""
    folder = tmp_path_factory.mktemp("int8") / "model"
    train_bundle(scene_patches, folder, inference_precision="int8,bfloat16")
    return folder


def validation_tiles(patches, metadata):
    """The dataset's validation patches as the network takes them, standardised
    here with numpy from the bundle's normalisation."""
    images = np.load(patches / "validation_images.npy").astype(np.float32)
    labels = np.load(patches / "validation_labels.npy")
    mean = np.asarray(metadata["normalisation"]["mean"], np.float32)
    std = np.asarray(metadata["normalisation"]["std"], np.float32)
    x = np.nan_to_num((images - mean) / std).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), labels


def ort_classes(path, x):
    """Classes by ONNX Runtime itself, on the file's own graph with free
    sizes (model.onnx is saved with 512-cell tiles for QGIS; its Deepness
    no-data step leaves standardised bands as they are)."""
    model = onnx.load(str(path))
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim[2:]:
            dim.dim_param = "size"
    session = onnxruntime.InferenceSession(model.SerializeToString())
    name = session.get_inputs()[0].name
    return np.concatenate(
        [
            session.run(None, {name: x[i : i + 16]})[0].argmax(1)
            for i in range(0, len(x), 16)
        ]
    )


def test_int8_model_made_checked_and_used(
    int8_bundle, scene_patches, scene_bands, tmp_path
):
    bundle = int8_bundle
    metadata = metadata_of(bundle)
    record = metadata["reduced_precision"]
    # A quantised graph: int8 weights and QDQ pairs, calibrated on the
    # dataset's training patches (all of them: fewer than 256).
    model = onnx.load(str(bundle / "model.int8.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    trained = np.load(scene_patches / "train_images.npy", mmap_mode="r")
    assert record["int8"]["calibration"]["patches"] == min(256, len(trained))
    checks = {(c["precision"], c["engine"]): c for c in record["checks"]}
    assert {("int8", "openvino"), ("int8", "onnx")} <= set(checks)
    assert (("bfloat16", "openvino") in checks) == NATIVE_BFLOAT16
    for check in checks.values():
        assert set(check["cpu"].split()) <= cpu_flags() | {"x86_64", "aarch64"}
    # The check's figures against an oracle: the classes of model.onnx and
    # model.int8.onnx in ONNX Runtime, run here, and scikit-learn's kappa.
    x, labels = validation_tiles(scene_patches, metadata)
    float32 = ort_classes(bundle / "model.onnx", x)
    int8 = ort_classes(bundle / "model.int8.onnx", x)
    keep = labels != 255
    check = checks[("int8", "onnx")]
    assert check["agreement"] == pytest.approx(np.mean(int8 == float32), abs=1e-6)
    assert check["kappa_float32"] == pytest.approx(
        cohen_kappa_score(labels[keep], float32[keep]), abs=1e-6
    )
    assert check["kappa"] == pytest.approx(
        cohen_kappa_score(labels[keep], int8[keep]), abs=1e-6
    )
    # On this constructed scene the int8 model passes its own check.
    assert check["passed"] and checks[("int8", "openvino")]["passed"], checks
    # i.ann.classify uses it when asked, and its map agrees with float32's.
    bands = ",".join(scene_bands)
    run_ok("i.ann.classify", input=bands, model=bundle, output="f32")
    result = run_ok(
        "i.ann.classify", input=bands, model=bundle, output="i8", precision="int8"
    )
    messages = " ".join(result.stderr.split())
    assert "Precision int8 (checked on this kind of CPU" in messages, messages
    assert "model.int8.onnx (int8)" in messages, messages
    assert "WARNING" not in result.stderr, result.stderr
    # The map's description names the precision it was made in.
    for name, precision in (("i8", "int8"), ("f32", "float32")):
        description = gs.raster_info(name)["description"].strip('"')
        assert description.endswith(
            "; network in {} (openvino)".format(precision)
        ), description
    f32, i8 = read_map("f32"), read_map("i8")
    assert np.mean(f32 == i8) >= 0.995
    # auto takes the fastest precision whose check passed here.
    passed = [c for c in record["checks"] if c["passed"] and c["engine"] == "openvino"]
    fastest = max(passed, key=lambda c: c["speed_ratio"])
    result = run_ok(
        "i.ann.classify", input=bands, model=bundle, output="auto", precision="auto"
    )
    expected = (
        "Precision {}".format(fastest["precision"])
        if fastest["speed_ratio"] > 1
        else "Engine: OpenVINO on model.onnx,"
    )
    assert expected in " ".join(result.stderr.split()), result.stderr


def test_bfloat16_where_native(int8_bundle, scene_bands):
    bands = ",".join(scene_bands)
    result = run(
        "i.ann.classify",
        input=bands,
        model=int8_bundle,
        output="bf16",
        precision="bfloat16",
    )
    assert result.returncode == 0, result.stderr
    messages = " ".join(result.stderr.split())
    if NATIVE_BFLOAT16:
        assert "Precision bfloat16 (checked" in messages, messages
        assert "model.onnx in bfloat16" in messages, messages
        run_ok("i.ann.classify", input=bands, model=int8_bundle, output="bf_f32")
        assert np.mean(read_map("bf16") == read_map("bf_f32")) >= 0.995
    else:
        assert "bfloat16 refused, this CPU has no native bfloat16" in messages


def constant_calibration_dataset(source, folder):
    """The dataset with every training patch one constant value: a
    calibration that cannot stand for the network's activations."""
    shutil.copytree(source, folder)
    images = np.load(folder / "train_images.npy")
    images[:] = images.reshape(-1, images.shape[-1]).mean(0).astype(images.dtype)
    np.save(folder / "train_images.npy", images)
    return folder


def test_failed_check_is_refused_never_used(
    int8_bundle, scene_patches, scene_bands, tmp_path
):
    bundle = tmp_path / "model"
    shutil.copytree(int8_bundle, bundle)
    patches = constant_calibration_dataset(scene_patches, tmp_path / "constant")
    result = run_ok(
        "i.ann.train",
        "overwrite",
        export=bundle,
        input=patches,
        inference_precision="int8",
    )
    assert "int8 on OpenVINO" in result.stderr and "check failed" in result.stderr
    checks = metadata_of(bundle)["reduced_precision"]["checks"]
    int8 = [c for c in checks if c["precision"] == "int8"]
    assert int8 and not any(c["passed"] for c in int8), int8
    bands = ",".join(scene_bands)
    run_ok("i.ann.classify", input=bands, model=bundle, output="ref32", engine="onnx")
    for precision in ("auto", "int8"):
        result = run_ok(
            "i.ann.classify",
            input=bands,
            model=bundle,
            output="refused_" + precision,
            precision=precision,
            engine="onnx",
        )
        messages = " ".join(result.stderr.split())
        assert "int8 refused, its check on this kind of CPU failed" in messages
        # float32 itself: the same map as a float32 run, cell for cell.
        np.testing.assert_array_equal(
            read_map("refused_" + precision), read_map("ref32")
        )


def test_checks_hold_per_kind_of_cpu_and_model_file(
    int8_bundle, scene_patches, scene_bands, tmp_path
):
    bundle = tmp_path / "model"
    shutil.copytree(int8_bundle, bundle)
    bands = ",".join(scene_bands)
    # A check made on another kind of CPU does not hold here ...
    metadata = metadata_of(bundle)
    for check in metadata["reduced_precision"]["checks"]:
        check["cpu"] = "x86_64 avx2 fma"
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    result = run_ok(
        "i.ann.classify", input=bands, model=bundle, output="other", precision="int8"
    )
    messages = " ".join(result.stderr.split())
    assert "it was not checked on this kind of CPU" in messages
    assert "checked on: x86_64 avx2 fma" in messages
    # ... and a Dask worker of another kind computes in float32, saying so.
    code = (
        "import builtins, sys; builtins._ = str; sys.path.insert(0, {lib!r});"
        "from iann.formats.bundle import read_bundle_metadata;"
        "from iann.predict.engines import load_engine;"
        "m = read_bundle_metadata({b!r});"
        "e = load_engine({b!r}, m, 'onnx', 1, 'int8');"
        "print(e.session._model_path)"
    ).format(lib=str(REPO / "lib"), b=str(bundle))
    worker = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert worker.returncode == 0, worker.stderr
    assert "int8 not used on" in worker.stderr and "computing in float32" in (
        worker.stderr
    )
    # Checking here again adds this kind's checks and keeps the other's;
    # the int8 model is not made anew without --overwrite.
    before = (bundle / "model.int8.onnx").read_bytes()
    run_ok(
        "i.ann.train",
        export=bundle,
        input=scene_patches,
        inference_precision="int8",
    )
    assert (bundle / "model.int8.onnx").read_bytes() == before
    kinds = {c["cpu"] for c in metadata_of(bundle)["reduced_precision"]["checks"]}
    assert "x86_64 avx2 fma" in kinds and len(kinds) == 2
    result = run_ok(
        "i.ann.classify", input=bands, model=bundle, output="here", precision="int8"
    )
    assert "Precision int8" in result.stderr
    # A model.int8.onnx that is not the file checked is refused.
    with open(bundle / "model.int8.onnx", "ab") as f:
        f.write(b"\0")
    result = run(
        "i.ann.classify", input=bands, model=bundle, output="stale", precision="int8"
    )
    assert_fails(result, "model.int8.onnx is not the file that was checked")
    assert not gs.find_file("stale", element="cell")["fullname"]


def test_bundle_without_reduced_precision(trained_bundle, scene_bands):
    bands = ",".join(scene_bands)
    run_ok("i.ann.classify", input=bands, model=trained_bundle, output="plain32")
    result = run_ok(
        "i.ann.classify",
        input=bands,
        model=trained_bundle,
        output="plain_auto",
        precision="auto",
    )
    assert "WARNING" not in result.stderr, result.stderr
    np.testing.assert_array_equal(read_map("plain_auto"), read_map("plain32"))
    result = run(
        "i.ann.classify",
        input=bands,
        model=trained_bundle,
        output="plain_int8",
        precision="int8",
    )
    assert_fails(
        result,
        "has no checked int8 model",
        "add one with: i.ann.train export={} input=".format(trained_bundle),
        "inference_precision=int8",
    )
    assert not gs.find_file("plain_int8", element="cell")["fullname"]
    assert "reduced_precision" not in metadata_of(trained_bundle)


def test_bad_precision_input(int8_bundle, scene_patches, scene_bands, tmp_path):
    bands = ",".join(scene_bands)
    # int8 on GPU workers, or on the Keras engine: not supported, said so.
    result = run(
        "i.ann.classify",
        "g",
        input=bands,
        model=int8_bundle,
        output="gpu8",
        precision="int8",
        scheduler="tcp://127.0.0.1:1",
    )
    assert_fails(result, "precision=int8 runs on the CPU engines only, not on GPUs")
    result = run(
        "i.ann.classify",
        input=bands,
        model=int8_bundle,
        output="keras8",
        precision="int8",
        engine="keras",
    )
    assert_fails(result, "precision=int8 runs on OpenVINO or ONNX Runtime")
    # Too few patches to calibrate on: an error naming the dataset, and the
    # bundle as it was (no model.int8.onnx, metadata.json unchanged).
    bundle = tmp_path / "model"
    shutil.copytree(int8_bundle, bundle)
    (bundle / "model.int8.onnx").unlink()
    metadata = metadata_of(bundle)
    del metadata["reduced_precision"]
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    before = (bundle / "metadata.json").read_bytes()
    few = tmp_path / "few"
    shutil.copytree(scene_patches, few)
    for name in ("train_images", "train_labels"):
        np.save(few / (name + ".npy"), np.load(few / (name + ".npy"))[:5])
    result = run("i.ann.train", export=bundle, input=few, inference_precision="int8")
    assert_fails(result, "Dataset <{}> has 5 training patches".format(few), "16")
    assert (bundle / "metadata.json").read_bytes() == before
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        p.name for p in int8_bundle.iterdir() if p.name != "model.int8.onnx"
    )
    # inference_precision needs a dataset: the parser says so.
    result = run("i.ann.train", export=bundle, inference_precision="int8")
    assert result.returncode != 0 and "input" in result.stderr
