"""model.onnx: a bundle's network for ONNX Runtime, OpenVINO and QGIS.

The network is exported in the form i.ann.classify predicts with (the
fcn's classifier split over its blocks), channels first: input
(batch, bands, height, width) of standardised bands, output (batch,
classes, height, width) of class probabilities, as QGIS's Deepness plugin
expects of a segmentation model. The ONNX metadata properties carry what
Deepness reads (model type, class names, resolution, tile size and
overlap, standardisation) and the whole bundle metadata under "i.ann".

The file on disk is Deepness's form: its panel takes the tile size from
the input's spatial dimensions, which must be fixed numbers, and it feeds
cells without data as their raw value (0 for a GeoTIFF written with
nodata=0), where i.ann fills them with the band mean. So the input's
height and width are fixed at the Deepness tile size, and a first step of
the graph (nodes named "nodata/...") gives a band that holds the
standardised value of a raw 0 its mean instead. i.ann's own
engines run `engine_model(path)`: the same graph with free height and
width and without that step (a band with data 0 is data like any other
in GRASS).

The export records a probe: the probabilities model.keras gives for a
fixed input, and the SHA-256 of model.keras. Whoever runs model.onnx
instead of model.keras first checks that it gives the same probabilities
on that probe (engines.py).
"""

import dataclasses
import json
import logging
import os
import time
import warnings

import numpy as np

from iann.errors import IannError
from iann.formats.bundle import MODEL_FILE, ONNX_FILE, sha256_of, write_metadata
from iann.grass.units import training_cell_size, units_of_wkt

# The probe: a few cells beyond the network's pooling multiple, so that
# every layer sees more than one position.
PROBE_CELLS = 20
# Largest difference of probabilities between model.onnx and model.keras on
# the probe that still counts as the same network (float32 rounding).
PROBE_TOLERANCE = 1e-4
# Deepness cuts its own tiles: this size, overlapping by the margin.
DEEPNESS_TILE = 512


def probe_input(shape, multiple):
    """The probe (1, bands, rows, cols), the same at export and at load time."""
    bands, cells = int(shape[0]), int(shape[1])
    cells = -(-cells // multiple) * multiple
    probe = np.random.default_rng(20261125).normal(size=(1, bands, cells, cells))
    return probe.astype(np.float32)


def channels_first_model(form, n_bands):
    """The network with channels-first input and output."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(n_bands, None, None), name="bands")
    x = layers.Permute((2, 3, 1), name="to_channels_last")(inputs)
    x = form(x)
    outputs = layers.Permute((3, 1, 2), name="probabilities")(x)
    return keras.Model(inputs, outputs, name="i_ann_channels_first")


CLASSES_OUTPUT = "classes"
NODATA_PREFIX = "nodata/"
# Deepness's raw value of a cell without data, and how close (in standard
# deviations) a standardised band must be to it: raw steps of 1 are at
# least 1/std apart, far more than this for any band of 8 or 16 bits.
NODATA_RAW = 0.0
NODATA_TOLERANCE = 1e-4


def add_nodata_fill(model, raw_means, raw_stds, raw_value=NODATA_RAW):
    """The Deepness form's first step: bands without data get their means.

    A band of a cell that, standardised as Deepness does, is within
    NODATA_TOLERANCE of raw_value's standardised value becomes 0 (the band
    mean, standardised), as i.ann fills each band without data.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    source = graph.input[0].name
    filled = NODATA_PREFIX + "bands"
    for node in graph.node:
        node.input[:] = [filled if name == source else name for name in node.input]
    means = np.asarray(raw_means, np.float32)
    stds = np.asarray(raw_stds, np.float32)
    standardised = ((np.float32(raw_value) - means) / stds).reshape(1, -1, 1, 1)

    def name(suffix):
        return NODATA_PREFIX + suffix

    graph.initializer.extend(
        [
            numpy_helper.from_array(standardised.astype(np.float32), name("value")),
            numpy_helper.from_array(np.float32(NODATA_TOLERANCE), name("tolerance")),
            numpy_helper.from_array(np.float32(0), name("zero")),
        ]
    )
    steps = [
        helper.make_node("Sub", [source, name("value")], [name("difference")]),
        helper.make_node("Abs", [name("difference")], [name("distance")]),
        helper.make_node(
            "Less", [name("distance"), name("tolerance")], [name("empty")]
        ),
        helper.make_node("Where", [name("empty"), name("zero"), source], [filled]),
    ]
    for step, node in enumerate(steps):
        node.name = name(str(step))
    nodes = steps + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def without_nodata_fill(model):
    """The graph with the Deepness no-data step taken out (i.ann's form)."""
    graph = model.graph
    filled = NODATA_PREFIX + "bands"
    source = graph.input[0].name
    kept = [node for node in graph.node if not node.name.startswith(NODATA_PREFIX)]
    if len(kept) == len(graph.node):
        return
    for node in kept:
        node.input[:] = [source if name == filled else name for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [
        i for i in graph.initializer if not i.name.startswith(NODATA_PREFIX)
    ]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def set_spatial_dimensions(model, size=None):
    """Batch free; height and width `size` cells, or free ("size") for None."""
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for index, dim in enumerate(dims):
            if index == 0 or (index >= 2 and size is None):
                dim.ClearField("dim_value")
                dim.dim_param = "batch" if index == 0 else "size"
            elif index >= 2:
                dim.ClearField("dim_param")
                dim.dim_value = int(size)


def engine_model(path, class_scale=None):
    """model.onnx as i.ann's engines run it, as bytes (the file is not changed).

    An i.ann bundle's own network gets free height and width and loses the
    Deepness no-data step. Every model gets a second output, the class
    index of each cell: an ArgMax over the probabilities' channel axis,
    computed by the engine where the probabilities are made (in its
    threads, while they are in its caches) when a job needs the classes
    alone. With `class_scale` (the decision rule, predict/decision.py) the
    ArgMax is of the probabilities times the scale of each class.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(path)
    properties = {p.key: p.value for p in model.metadata_props}
    if "i.ann" in properties and "i.ann.imported" not in properties:
        without_nodata_fill(model)
        set_spatial_dimensions(model, None)
    probabilities = model.graph.output[0].name
    decided = probabilities
    if class_scale is not None:
        decided = "decision/scaled"
        model.graph.initializer.append(
            numpy_helper.from_array(
                np.asarray(class_scale, np.float32).reshape(1, -1, 1, 1),
                "decision/scale",
            )
        )
        model.graph.node.append(
            helper.make_node("Mul", [probabilities, "decision/scale"], [decided])
        )
    model.graph.node.append(
        helper.make_node("ArgMax", [decided], [CLASSES_OUTPUT], axis=1, keepdims=0)
    )
    dims = [
        d.dim_param or d.dim_value
        for d in model.graph.input[0].type.tensor_type.shape.dim
    ]
    model.graph.output.append(
        helper.make_tensor_value_info(
            CLASSES_OUTPUT, TensorProto.INT64, [dims[0], dims[2], dims[3]]
        )
    )
    return model.SerializeToString()


def deepness_tile(metadata):
    """Deepness's tile: 512 cells, or more, so that its overlap covers
    twice the margin with a core at least as wide."""
    if metadata.input_size:
        return int(metadata.input_size)
    margin = int(metadata.margin)
    multiple = int(metadata.size_multiple)
    tile = max(DEEPNESS_TILE, 4 * margin)
    return -(-tile // multiple) * multiple


def deepness_properties(metadata):
    """ONNX metadata properties in the form QGIS's Deepness plugin reads."""
    margin = int(metadata.margin)
    tile = deepness_tile(metadata)
    # Deepness scales bands to 0..1 (divides by 255) before standardising:
    # (x/255 - m/255) / (s/255) is i.ann's (x - m) / s.
    mean = [m / 255.0 for m in metadata.normalisation["mean"]]
    std = [s / 255.0 for s in metadata.normalisation["std"]]
    properties = {
        "model_type": "Segmentor",
        "class_names": {str(i): c["label"] for i, c in enumerate(metadata.classes)},
        # Deepness's code reads tile_size, its documentation writes tiles_size.
        "tile_size": tile,
        "tiles_size": tile,
        # A percentage of the tile; Deepness keeps each tile but half the
        # overlap on each side: floor(tile * overlap / 100) // 2 >= margin.
        "tiles_overlap": int(np.ceil(100.0 * 2 * margin / tile)),
        "nodata_value": NODATA_RAW,
        "standardization_mean": mean,
        "standardization_std": std,
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
    }
    resolution = training_resolution_cm(metadata)
    if resolution:
        properties["resolution"] = resolution
    bundle = dataclasses.replace(metadata, onnx=None).to_json()
    properties["i.ann"] = bundle
    return {key: json.dumps(value) for key, value in properties.items()}


def training_resolution_cm(metadata):
    """Cell size of the training data in cm, for a projected project."""
    dataset = metadata.dataset or {}
    region = dataset.get("region") or {}
    if int(region.get("projection", -1)) in (0, 3):
        return None  # unprojected or latitude-longitude: no size in cm
    if units_of_wkt(dataset.get("projection")) in (None, "degrees"):
        return None
    metres = training_cell_size(dataset)
    return None if metres is None else metres * 100.0


def quiet_converters():
    # What the converter cannot do is reported once, in i.ann's warning.
    for name in ("tf2onnx", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def check_exported(path, probe, expected):
    """Raise when the exported file is not the network it was made from.

    The converter writes operators it does not know as they are (e.g. a
    custom layer's Erfinv), which no runtime can run: the file must pass
    ONNX's own checker and give model.keras' probabilities on the probe.
    """
    import onnx

    onnx.checker.check_model(path, full_check=True)
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(
        engine_model(path), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {session.get_inputs()[0].name: probe})[0]
    difference = float(np.abs(got - expected).max())
    if not difference <= PROBE_TOLERANCE:
        raise ValueError(
            "model.onnx gives other probabilities than model.keras (by {:.2g})".format(
                difference
            )
        )


def export_onnx(folder, model, metadata):
    """Write model.onnx beside model.keras in the bundle `folder`.

    Returns the record for the bundle's metadata (probe, checksum, export
    time), or None and the reason when the network cannot be exported (a
    custom layer the converter does not know, a converter not installed).
    """
    import keras

    from iann.nn.architectures import fcn_for_prediction

    started = time.perf_counter()
    n_bands = len(metadata.bands)
    multiple = int(metadata.size_multiple)
    path = os.path.join(folder, ONNX_FILE)
    temporary = path + ".tmp"
    try:
        import onnx

        quiet_converters()
        form = fcn_for_prediction(model) or model
        wrapper = channels_first_model(form, n_bands)
        probe = probe_input((n_bands, PROBE_CELLS), multiple)
        expected = np.asarray(wrapper.predict_on_batch(probe), dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper.export(temporary, format="onnx", verbose=False)
        exported = onnx.load(temporary)
        set_spatial_dimensions(exported, deepness_tile(metadata))
        add_nodata_fill(
            exported, metadata.normalisation["mean"], metadata.normalisation["std"]
        )
        for key, value in deepness_properties(metadata).items():
            exported.metadata_props.add(key=key, value=value)
        onnx.save(exported, temporary)
        check_exported(temporary, probe, expected)
        os.replace(temporary, path)
    except Exception as error:  # noqa: BLE001 - any layer the converter lacks
        if os.path.exists(temporary):
            os.remove(temporary)
        return None, "{}: {}".format(type(error).__name__, str(error)[:300])
    record = {
        "file": ONNX_FILE,
        "keras_sha256": sha256_of(os.path.join(folder, MODEL_FILE)),
        "probe_shape": [n_bands, PROBE_CELLS],
        "probe_output": expected.transpose(0, 2, 3, 1).round(7).tolist(),
        "export_seconds": round(time.perf_counter() - started, 2),
        "converter": "keras {} ({} backend)".format(
            keras.__version__, keras.backend.backend()
        ),
    }
    return record, None


def add_onnx(folder, model, metadata):
    """Export model.onnx into the bundle; the metadata with its record."""
    record, problem = export_onnx(folder, model, metadata)
    if record is None:
        return dataclasses.replace(metadata, onnx=None), problem
    return dataclasses.replace(metadata, onnx=record), None


def add_onnx_to_bundle(folder, overwrite=False):
    """Export model.onnx into an existing bundle; the seconds it took.

    For bundles written without one; an existing model.onnx is replaced
    only with `overwrite`.
    """
    from iann.nn.saving import load_bundle

    metadata, model = load_bundle(folder)
    if os.path.exists(os.path.join(folder, ONNX_FILE)) and not overwrite:
        raise IannError(
            _("Model bundle <{}> has a {}; use --overwrite to replace it").format(
                folder, ONNX_FILE
            )
        )
    metadata, problem = add_onnx(folder, model, metadata)
    if problem:
        raise IannError(
            _("The network of <{}> cannot be exported to ONNX: {}").format(
                folder, problem
            )
        )
    write_metadata(folder, metadata)
    return metadata.onnx["export_seconds"]
