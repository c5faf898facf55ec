"""Bundles from ONNX segmentation models trained elsewhere.

A model exported from PyTorch, segmentation-models, a Deepness model zoo
or a colleague's code becomes a bundle that i.ann.classify runs like its
own (tiles with margins, blocks, resume, Dask, probabilities,
uncertainty, accuracy): model.onnx in i.ann's form (channels first,
(batch, bands, rows, cols) standardised bands in, (batch, classes, rows,
cols) probabilities out, a Softmax added to a model that gives scores),
and metadata.json with the bands, classes and standardisation the user
gives or the file's Deepness metadata holds.

The margin read around each tile is the one given, the one the file's
Deepness metadata implies (half its overlap), or measured on the model
itself: cells whose probabilities change by more than MEASURE_CHANGE when
one input cell changes by MEASURE_STEP standard deviations, as the suite
measures its own networks (nn/receptive_field.py) when their layers do not
tell. Networks that pool over the whole tile (squeeze-and-excitation
blocks) change every cell a little: the measure counts what changes a
probability visibly.
"""

import datetime
import json
import os

import numpy as np

from iann import __version__
from iann.errors import IannError
from iann.formats.bundle import ONNX_FILE, BundleMetadata, sha256_of
from iann.predict.onnx_export import deepness_properties

# A probability that sums to one within this is a probability already.
SUM_TOLERANCE = 1e-3
# The margin measurement: a step of one input cell, in standard deviations
# (all bands), and the change of a probability that counts.
MEASURE_STEP = 3.0
MEASURE_CHANGE = 1e-3
# The side measured on for a model of free input size.
MEASURE_SIZE = 256
# Pooling multiples tried for a model of free input size.
MULTIPLES = (1, 2, 4, 8, 16, 32, 64)


# The probe's probabilities kept in the record: those of the central cells
# (a large model's whole tile would make metadata.json megabytes).
PROBE_KEPT = 16


def probe_window(side):
    start = max(0, side // 2 - PROBE_KEPT // 2)
    return slice(start, min(side, start + PROBE_KEPT))


def problem(source, text):
    return IannError(_("ONNX model <{}>: {}").format(source, text))


def load_model(source):
    """The ONNX model in `source`, checked; a clear error for anything else."""
    import onnx

    if not os.path.isfile(source):
        raise IannError(_("ONNX model <{}> not found").format(source))
    try:
        model = onnx.load(source)
        onnx.checker.check_model(model)
    except Exception as error:  # noqa: BLE001 - any way a file is not a model
        raise problem(
            source,
            _(
                "not a readable ONNX model (truncated or another kind of file: {})"
            ).format(
                str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            ),
        )
    return model


def dimension(dim):
    """A tensor dimension: its number, or None where it is free."""
    return dim.dim_value if dim.HasField("dim_value") else None


def interface(source, model):
    """(bands, input_size or None) of a (batch, bands, rows, cols) model."""
    initialisers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise problem(
            source,
            _("it takes {} inputs; a segmentation model takes one").format(len(inputs)),
        )
    dims = [dimension(d) for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise problem(
            source,
            _(
                "its input has {} dimensions; a segmentation model takes "
                "(batch, bands, rows, cols)"
            ).format(len(dims)),
        )
    if dims[1] is None:
        raise problem(
            source,
            _("the number of bands of its input (dimension 2 of 4) is not fixed"),
        )
    if dims[2] != dims[3] or (dims[2] is not None and dims[2] < 16):
        raise problem(
            source,
            _(
                "its input must be channels first, (batch, bands, rows, cols), "
                "with square tiles of free or fixed size; it is {}"
            ).format(dims),
        )
    return dims[1], dims[2]


def session_of(model):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def run(session, x):
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def size_multiple(source, model, bands):
    """The smallest pooling multiple the tiles' sides must be of (free size)."""
    session = session_of(model)
    for multiple in MULTIPLES:
        side = 7 * multiple
        try:
            out = run(session, np.zeros((1, bands, side, side), np.float32))
        except Exception:  # noqa: BLE001 - this size does not go through
            continue
        if out.ndim != 4:
            raise problem(
                source,
                _(
                    "its output for a tile of {} x {} cells is {}, not per-class "
                    "scores (batch, classes, rows, cols)"
                ).format(side, side, list(out.shape)),
            )
        if out.shape[2:] == (side, side):
            return multiple
    raise problem(
        source,
        _("it gives no output of the input's size for tiles of any side tried"),
    )


def with_probabilities(source, model, bands, side):
    """The model with a Softmax over its scores where they are not
    probabilities yet; (model, output kind, classes)."""
    from onnx import helper

    session = session_of(model)
    x = np.random.default_rng(20261203).normal(size=(2, bands, side, side))
    try:
        out = run(session, x.astype(np.float32))
    except Exception as error:  # noqa: BLE001 - a model that does not run
        raise problem(
            source,
            _("it does not run on tiles of {} x {} cells: {}").format(
                side, side, str(error).splitlines()[0][:200]
            ),
        )
    if out.ndim != 4 or out.shape[0] != 2 or out.shape[2:] != (side, side):
        raise problem(
            source,
            _(
                "its output for 2 tiles of {} x {} cells is {}, not per-class "
                "scores (batch, classes, rows, cols) for every cell"
            ).format(side, side, list(out.shape)),
        )
    classes = out.shape[1]
    if classes < 2:
        raise problem(
            source,
            _("its output has one channel, not one score per class"),
        )
    sums = out.sum(axis=1)
    if out.min() >= 0 and out.max() <= 1 and np.abs(sums - 1).max() <= SUM_TOLERANCE:
        kind = "probabilities"
    else:
        scores = model.graph.output[0].name
        renamed = scores + "_scores"
        for node in model.graph.node:
            node.output[:] = [renamed if n == scores else n for n in node.output]
        model.graph.node.append(
            helper.make_node("Softmax", [renamed], [scores], axis=1, name="softmax")
        )
        kind = "scores (a Softmax added)"
    del model.graph.output[1:]
    shape = model.graph.output[0].type.tensor_type.shape
    del shape.dim[:]
    for _axis in range(4):
        shape.dim.add()
    shape.dim[1].dim_value = classes
    return model, kind, classes


def set_declared_shapes(model, size):
    """Batch free, height and width `size` (or free): declared, as Deepness
    and the engines read them (some exporters write them wrong)."""
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        dims[0].ClearField("dim_value")
        dims[0].dim_param = "batch"
        for dim in dims[2:]:
            if size:
                dim.ClearField("dim_param")
                dim.dim_value = size
            else:
                dim.ClearField("dim_value")
                dim.dim_param = "size"


def measured_reach(model, bands, side):
    """Farthest distance (cells) at which a one-cell change of the input
    changes a probability by more than MEASURE_CHANGE; None when the change
    reaches the tile's edge."""
    session = session_of(model)
    base = np.random.default_rng(7).normal(size=(1, bands, side, side))
    base = base.astype(np.float32)
    reference = run(session, base)
    centre = side // 2
    changed = np.zeros((side, side), bool)
    for step in (-MEASURE_STEP, MEASURE_STEP):
        probe = base.copy()
        probe[0, :, centre, centre] += step
        changed |= np.abs(run(session, probe) - reference).max(axis=(0, 1)) > (
            MEASURE_CHANGE
        )
    rows, cols = np.nonzero(changed)
    if len(rows) == 0:
        return 0
    reach = int(max(np.abs(rows - centre).max(), np.abs(cols - centre).max()))
    return None if reach >= centre else reach


def deepness_margin(model):
    """Half the overlap the file's Deepness metadata states, or None."""
    properties = {p.key: p.value for p in model.metadata_props}
    try:
        tile = int(json.loads(properties["tile_size"]))
        overlap = float(json.loads(properties["tiles_overlap"]))
    except (KeyError, ValueError, TypeError):
        return None
    return int(tile * overlap / 100) // 2


def deepness_defaults(model):
    """Class names and standardisation (in the maps' units: Deepness divides
    by 255 first) from the file's Deepness metadata, where it has them."""
    properties = {p.key: p.value for p in model.metadata_props}
    found = {}
    try:
        names = json.loads(properties["class_names"])
        found["classes"] = [names[key] for key in sorted(names, key=int)]
    except (KeyError, ValueError, TypeError, AttributeError):
        pass
    try:
        mean = json.loads(properties["standardization_mean"])
        std = json.loads(properties["standardization_std"])
        found["mean"] = [float(m) * 255 for m in mean]
        found["std"] = [float(s) * 255 for s in std]
    except (KeyError, ValueError, TypeError):
        pass
    return found


def parse_classes(items):
    """classes= items, `value:label` or `label`: [(value, label)]."""
    classes = []
    for index, item in enumerate(items):
        value, sep, label = item.partition(":")
        if sep:
            try:
                classes.append((int(value), label))
            except ValueError:
                raise IannError(
                    _("Class <{}>: the value before ':' must be an integer").format(
                        item
                    )
                )
        else:
            classes.append((index, item))
    return classes


def import_onnx(
    source, folder, classes=None, bands=None, mean=None, std=None, margin=None
):
    """Make the bundle `folder` from the ONNX segmentation model `source`.

    Returns its metadata. `classes`: `value:label` or `label` items, one
    per output channel; `bands`: names, one per input band; `mean`, `std`:
    per band, in the units of the maps the bundle will classify; `margin`:
    cells read around each tile. Classes and standardisation not given are
    taken from the file's Deepness metadata.
    """
    import onnx

    model = load_model(source)
    n_bands, input_size = interface(source, model)
    defaults = deepness_defaults(model)
    mean = mean or defaults.get("mean")
    std = std or defaults.get("std")
    if mean is None or std is None:
        raise problem(
            source,
            _("give the bands' standardisation (mean= and std=, one value a band)"),
        )
    for name, values in (("mean", mean), ("std", std), ("bands", bands)):
        if values is not None and len(values) != n_bands:
            raise problem(
                source,
                _("it takes {} bands, {}= has {} values").format(
                    n_bands, name, len(values)
                ),
            )
    if min(std) <= 0:
        raise IannError(_("std= must be positive for every band"))
    multiple = 1 if input_size else size_multiple(source, model, n_bands)
    side = input_size or -(-MEASURE_SIZE // multiple) * multiple
    model, kind, n_classes = with_probabilities(source, model, n_bands, side)
    labels = parse_classes(classes) if classes else None
    if labels is None and "classes" in defaults:
        labels = list(enumerate(defaults["classes"]))
    if labels is None:
        raise problem(
            source,
            _("give its {} classes (classes=, value:label or label each)").format(
                n_classes
            ),
        )
    if len(labels) != n_classes:
        raise problem(
            source,
            _("it gives scores for {} classes, classes= names {}").format(
                n_classes, len(labels)
            ),
        )
    if len({value for value, _label in labels}) != len(labels):
        raise IannError(_("The values of classes= must differ"))
    if margin is not None:
        margin_method = "given"
    elif deepness_margin(model) is not None:
        margin, margin_method = deepness_margin(model), "half the stated overlap"
    else:
        reach = measured_reach(model, n_bands, side)
        if reach is None:
            margin = side // 4
            margin_method = (
                "measured: changes reach the tile's edge, a quarter of the tile"
            )
        else:
            margin = reach
            margin_method = "measured: changes of more than {} within {} cells".format(
                MEASURE_CHANGE, reach
            )
    margin = -(-int(margin) // multiple) * multiple
    if input_size and input_size - 2 * margin < input_size // 4:
        raise IannError(
            _(
                "A margin of {} cells leaves too small a core of the model's "
                "{}-cell tiles; give a smaller margin="
            ).format(margin, input_size)
        )
    set_declared_shapes(model, input_size)
    del model.metadata_props[:]
    metadata = BundleMetadata(
        architecture=os.path.basename(source),
        architecture_file=os.path.abspath(source),
        parameters={},
        size_multiple=multiple,
        bands=[{"name": name} for name in (bands or [])]
        or [{"name": "band{}".format(i + 1)} for i in range(n_bands)],
        classes=[
            {"index": i, "value": value, "label": label, "color": None}
            for i, (value, label) in enumerate(labels)
        ],
        normalisation={
            "method": "standardise",
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
        },
        receptive_field=2 * margin + 1,
        receptive_field_method=margin_method,
        margin=margin,
        software={"i.ann": __version__, "onnx": onnx.__version__},
        imported={
            "source": os.path.abspath(source),
            "source_sha256": sha256_of(source),
            "imported": datetime.datetime.now().isoformat(timespec="seconds"),
            "input_size": input_size,
            "output": kind,
            "margin": margin_method,
        },
    )
    path = os.path.join(folder, ONNX_FILE)
    for key, value in deepness_properties(metadata).items():
        model.metadata_props.add(key=key, value=value)
    model.metadata_props.add(key="i.ann.imported", value=json.dumps(source))
    onnx.save(model, path)
    probe = np.random.default_rng(20261125).normal(size=(1, n_bands, side, side))
    probe = probe.astype(np.float32)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    window = probe_window(side)
    expected = run(session, probe)[:, :, window, window]
    record = {
        "file": ONNX_FILE,
        "sha256": sha256_of(path),
        "keras_sha256": None,
        "probe_shape": [n_bands, side],
        "probe_window": [window.start, window.stop],
        "probe_output": expected.transpose(0, 2, 3, 1).round(7).tolist(),
    }
    metadata.onnx = record
    return metadata
