"""i.ann.train import=: segmentation models trained elsewhere, classified by
i.ann.classify like its own.

The real model is one nobody here trained: the 6-band cloud and cloud
shadow U-Net (EfficientNet-B4 encoder, fixed 256-cell tiles, class scores
out) of the PyPI package ukis-csmask, on the six bands of the North
Carolina Landsat 7 scene. Its oracle is ONNX Runtime run directly on the
package's own file, and the package's own CSmask.
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import grass.script as gs

from conftest import REPO, assert_fails, manual_block, read_map, run, run_ok

LANDSAT = ("10", "20", "30", "40", "50", "70")
# ukis-csmask's names for the bands of its 6-band model, in its order.
CSMASK_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")


@pytest.fixture(scope="module")
def csmask():
    """The package's 6-band model (L1C) and its statistics sidecar."""
    import ukis_csmask

    folder = Path(ukis_csmask.__file__).parent
    sidecar = json.loads((folder / "model_6b_l1c.json").read_text())
    statistics = sidecar["data"]["dataset_statistics"]
    assert statistics["band_names"] == list(CSMASK_BANDS)
    mean, std = statistics["img"]
    return folder / "model_6b_l1c.onnx", mean, std


def softmax(scores):
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_foreign_model_classifies_like_onnx_runtime(mapset, nc_data, csmask, tmp_path):
    import onnxruntime
    from ukis_csmask.mask import CSmask

    subprocess.run(
        ["bash", str(REPO / "demo" / "import_nc.sh"), str(nc_data)],
        check=True,
        capture_output=True,
    )
    # The manual's example, as printed: the bands scaled to 0..1 (as
    # ukis-csmask requires), the model imported with the package's
    # statistics (rounded) and half its stated overlap of 20% of 256 cells
    # as the margin, the scene classified (engine=auto).
    example = manual_block(
        "i.ann.train/i.ann.train.html", "A cloud mask trained elsewhere</h3>"
    )
    assert "i.ann.train import=" in example and "i.ann.classify" in example
    done = subprocess.run(
        example, shell=True, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "scores (a Softmax added)" in " ".join(done.stderr.split())
    bands = ["refl_" + band for band in LANDSAT]
    model, mean, std = csmask
    # The same import with the package's statistics unrounded.
    bundle = tmp_path / "csmask_exact"
    result = run_ok(
        "i.ann.train",
        "overwrite",
        **{"import": model},
        bands=",".join(CSMASK_BANDS),
        classes="0:clear,1:cloud,2:shadow",
        mean=",".join(map(str, mean)),
        std=",".join(map(str, std)),
        margin=26,
        output=bundle,
    )
    assert "scores (a Softmax added)" in " ".join(result.stderr.split())
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["imported"]["input_size"] == 256
    assert metadata["margin"] == 26
    assert not (bundle / "model.keras").exists()

    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=bundle,
        output="clouds_exact",
        probabilities="cloudp_exact",
        engine="onnx",
    )
    classes = read_map("clouds_exact", null=-1, dtype=np.int32)
    probabilities = np.stack(
        [read_map("cloudp_exact_{}".format(k), null=np.nan) for k in range(3)]
    )
    # The manual's map: the same classes but where rounding decides.
    example_classes = read_map("clouds", null=-1, dtype=np.int32)
    assert (example_classes == classes).mean() > 0.999
    data = np.stack([read_map(b, null=np.nan) for b in bands]).astype(np.float32)
    valid = ~np.isnan(data).any(axis=0)
    assert (classes[valid] >= 0).all() and (classes[~valid] == -1).all()

    # The oracle: the package's model in ONNX Runtime, on the bands
    # standardised with the package's statistics (no data: 0, the mean), on
    # each tile as the manual describes i.ann's tiling: cores of 256 - 2 x
    # 26 cells, read with 26 cells around them within the region, at the
    # top left of a tile of 256 cells filled with 0.
    session = onnxruntime.InferenceSession(
        str(model), providers=["CPUExecutionProvider"]
    )
    standardised = (data - np.float32(mean)[:, None, None]) / np.float32(std)[
        :, None, None
    ]
    standardised = np.nan_to_num(standardised, nan=0.0)
    rows, cols = valid.shape
    core, margin = 256 - 2 * 26, 26
    expected = np.zeros((3, rows, cols), np.float32)
    for row in range(0, rows, core):
        for col in range(0, cols, core):
            r0, c0 = max(0, row - margin), max(0, col - margin)
            r1, c1 = min(rows, row + core + margin), min(cols, col + core + margin)
            tile = np.zeros((1, 6, 256, 256), np.float32)
            tile[0, :, : r1 - r0, : c1 - c0] = standardised[:, r0:r1, c0:c1]
            (scores,) = session.run(None, {session.get_inputs()[0].name: tile})
            out = softmax(scores)[0]
            height, width = min(core, rows - row), min(core, cols - col)
            expected[:, row : row + height, col : col + width] = out[
                :, row - r0 : row - r0 + height, col - c0 : col - c0 + width
            ]
    difference = np.abs(probabilities[:, valid] - expected[:, valid]).max()
    assert difference <= 1e-4, difference
    np.testing.assert_array_equal(classes[valid], expected.argmax(axis=0)[valid])
    assert len(np.unique(classes[valid])) >= 2, np.unique(classes[valid])

    # The package's own CSmask on the same reflectances (its tiles overlap
    # and blend, i.ann's keep a core): the same class nearly everywhere
    # away from the scene's edges.
    image = np.nan_to_num(data, nan=0.0).transpose(1, 2, 0).copy()
    mask = CSmask(image, band_order=list(CSMASK_BANDS), product_level="l1c")
    theirs = mask.csm[:, :, 0].astype(np.int32)
    inner = valid.copy()
    inner[:margin], inner[-margin:], inner[:, :margin], inner[:, -margin:] = (
        False,
        False,
        False,
        False,
    )
    agreement = (theirs[inner] == classes[inner]).mean()
    print("class agreement with CSmask: {:.4f}".format(agreement))
    assert agreement > 0.99, agreement


def test_deepness_model_imported_with_its_metadata(mapset, trained_bundle, tmp_path):
    """A model with Deepness metadata needs no options: i.ann's own export,
    imported as a foreign file (fixed 512-cell tiles), maps as its bundle."""
    from conftest import make_synthetic

    gs.run_command("g.region", rows=700, cols=650)
    bands, reference = make_synthetic()
    bundle = tmp_path / "imported"
    # The standardisation and the margin from the file's Deepness metadata;
    # the classes' values given (Deepness names classes, not their values).
    # From Python as the manual says: import_ (a Python keyword otherwise).
    gs.run_command(
        "i.ann.train",
        import_=trained_bundle / "model.onnx",
        classes="11:water,21:forest,31:urban",
        output=bundle,
        quiet=True,
    )
    metadata = json.loads((bundle / "metadata.json").read_text())
    original = json.loads((trained_bundle / "metadata.json").read_text())
    assert [c["label"] for c in metadata["classes"]] == ["water", "forest", "urban"]
    np.testing.assert_allclose(
        metadata["normalisation"]["mean"], original["normalisation"]["mean"], rtol=1e-6
    )
    assert metadata["imported"]["input_size"] == 512
    assert metadata["margin"] >= original["margin"]
    assert metadata["receptive_field_method"] == "half the stated overlap"
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="own",
        probabilities="ownp",
    )
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=bundle,
        output="foreign",
        probabilities="foreignp",
        uncertainty="foreignu",
        reference=reference,
        report=tmp_path / "report.json",
        nprocs=2,
        block_size=256,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cells"] > 0 and 0 <= report["overall_accuracy"] <= 1
    uncertainty = read_map("foreignu")
    assert np.isfinite(uncertainty).all() and (uncertainty >= 0).all()
    # Away from the region's edges: there, the foreign model's tiles are
    # filled with 0 up to 512 cells, where i.ann's own network reads no
    # more than the region (its convolutions pad each layer with zeros).
    margin = original["margin"]
    inner = (slice(margin, -margin), slice(margin, -margin))
    for value in (11, 21, 31):
        np.testing.assert_allclose(
            read_map("foreignp_{}".format(value))[inner],
            read_map("ownp_{}".format(value))[inner],
            atol=1e-5,
        )
    own = read_map("own", null=0, dtype=np.int32)[inner]
    foreign = read_map("foreign", null=0, dtype=np.int32)[inner]
    np.testing.assert_array_equal(foreign, own)


TINY_INPUT = ["batch", 6, "size", "size"]


def tiny_model(path, input_shape, output_op):
    """A small ONNX model: a 1x1 convolution to 3 channels, then `output_op`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(
        np.ones((3, input_shape[1], 1, 1), np.float32), "weights"
    )
    nodes = [helper.make_node("Conv", ["x", "weights"], ["scores"])]
    output_shape = ["batch", 3, "size", "size"]
    if output_op == "reduce":
        nodes.append(
            helper.make_node("ReduceMax", ["scores"], ["y"], axes=[1], keepdims=0)
        )
        output_shape = ["batch", "size", "size"]
    elif output_op == "one":
        nodes.append(
            helper.make_node("ReduceMax", ["scores"], ["y"], axes=[1], keepdims=1)
        )
        output_shape = ["batch", 1, "size", "size"]
    else:
        nodes.append(helper.make_node("Identity", ["scores"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


def test_bad_models_are_refused(mapset, csmask, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    model, mean, std = csmask
    options = dict(
        classes="clear,cloud,shadow",
        mean=",".join(map(str, mean)),
        std=",".join(map(str, std)),
    )
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[:1_000_000])
    flat = tmp_path / "flat.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
    )
    onnx.save(helper.make_model(graph), flat)
    reduced = tiny_model(tmp_path / "reduced.onnx", TINY_INPUT, "reduce")
    single = tiny_model(tmp_path / "single.onnx", TINY_INPUT, "one")
    fine = tiny_model(tmp_path / "fine.onnx", TINY_INPUT, None)
    cases = [
        (truncated, options, "not a readable ONNX model"),
        (flat, options, "its input has 2 dimensions"),
        (reduced, options, "not per-class scores"),
        (single, options, "one channel, not one score per class"),
        (
            model,
            dict(options, mean="0.1,0.2,0.3,0.4", std="1,1,1,1"),
            "it takes 6 bands, mean= has 4 values",
        ),
        (model, dict(options, classes="clear,cloud"), "classes= names 2"),
        (fine, {k: v for k, v in options.items() if k != "mean"}, "mean"),
        (tmp_path / "missing.onnx", options, "not found"),
    ]
    for source, given, message in cases:
        output = tmp_path / "out"
        result = run("i.ann.train", **{"import": source}, output=output, **given)
        if message == "mean":
            # The parser's rule: mean and std go together.
            assert result.returncode != 0 and "Traceback" not in result.stderr
            assert "mean" in result.stderr and "std" in result.stderr
        else:
            assert_fails(result, str(source), message)
        assert not output.exists(), source
        assert not list(tmp_path.glob(".out.tmp-*")), source
    # The tiny model itself imports (3 classes, any tile size): the cases
    # above fail for what each names, not for the tiny model's form.
    run_ok("i.ann.train", **{"import": fine}, output=tmp_path / "fine", **options)
    metadata = json.loads((tmp_path / "fine" / "metadata.json").read_text())
    assert metadata["imported"]["input_size"] is None
    assert metadata["margin"] == 0  # a 1x1 convolution reads no neighbour
