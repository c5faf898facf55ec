"""Fully convolutional networks for land-cover mapping, built with Keras 3.

One builder per architecture, each made of small layer-building functions,
in the manner of the keras.io examples. Everything is backend-neutral
(keras.layers and keras.ops only), so the models run under TensorFlow, JAX
or PyTorch.

A user's own architecture is a Python file defining
`build_model(input_shape, n_classes, **params)` that returns a Keras model
mapping (rows, cols, bands) to (rows, cols, n_classes) class probabilities.

The receptive field (the context an output cell depends on) is computed
from the layer graph where every layer is a known kind, and measured by
perturbing input cells otherwise; classification reads that much margin
around each tile, so the tiles join without seams.
"""

import importlib.util
import os

import numpy as np

import keras
from keras import layers

from .errors import IannError


def dilated_block(x, filters, kernel_size, padding, name):
    """Dilated convolution, ReLU, batch norm and a stride-1 max pooling.

    The zero padding keeps the spatial size, so the network is fully
    convolutional and its output has the input's size.
    """
    x = layers.ZeroPadding2D(padding, name=name + "_pad")(x)
    x = layers.Conv2D(
        filters, kernel_size, dilation_rate=2, padding="valid", name=name + "_conv"
    )(x)
    x = layers.ReLU(name=name + "_relu")(x)
    x = layers.BatchNormalization(name=name + "_bn")(x)
    x = layers.ZeroPadding2D(1, name=name + "_poolpad")(x)
    return layers.MaxPooling2D(3, strides=1, name=name + "_pool")(x)


def classifier_head(x, n_classes):
    """1x1 convolution to class scores and a softmax over classes.

    The softmax computes in float32 whatever the precision policy, so that
    mixed-precision networks give float32 probabilities and losses.
    """
    x = layers.Conv2D(n_classes, 1, name="head_conv")(x)
    return layers.Softmax(axis=-1, name="head_softmax", dtype="float32")(x)


def fcn_features(inputs, filters):
    """The seven dilated blocks of the fcn; every block's output, in order."""
    x0 = dilated_block(inputs, filters, 5, 4, "block1a")
    x1 = dilated_block(x0, filters, 5, 4, "block1b")
    features = [x0, x1]
    for i in range(5):
        features.append(dilated_block(features[-1], filters, 3, 2, f"block2{i}"))
    return features


def build_fcn(input_shape, n_classes, filters=64):
    """The dilated dense FCN of Mboga et al. (2019, Remote Sensing 11, 597).

    Two 5x5 blocks then five 3x3 blocks, all dilated by 2; the outputs of
    all seven blocks are concatenated before the classifier, so the head
    sees features at every scale of context.
    """
    inputs = keras.Input(shape=(None, None, input_shape[-1]), name="bands")
    features = fcn_features(inputs, filters)
    x = layers.Concatenate(axis=-1, name="concat")(features)
    outputs = classifier_head(x, n_classes)
    return keras.Model(inputs, outputs, name="fcn")


def fcn_for_prediction(model):
    """The trained fcn with its classifier split over the blocks, or None.

    A 1x1 convolution of the concatenated block outputs is the sum of 1x1
    convolutions of each block's output with its slice of the kernel. Added
    up as the blocks are computed, each block's output can be freed once
    the next block has read it, instead of all seven being held for the
    concatenation: a third of the peak memory for a 1074-cell tile, so larger tiles
    (less margin recomputed) fit in the same memory. The same weights give
    the same probabilities (checked on a probe); None when `model` is not
    the fcn of build_fcn.
    """
    try:
        head = model.get_layer("head_conv")
        filters = model.get_layer("block1a_conv").filters
        kernel, bias = head.get_weights()
    except ValueError:
        return None
    n_bands, n_classes = model.input_shape[-1], head.filters
    if kernel.shape != (1, 1, 7 * filters, n_classes):
        return None
    inputs = keras.Input(shape=(None, None, n_bands), name="bands")
    scores, head_parts = None, []
    for i, block in enumerate(fcn_features(inputs, filters)):
        head_parts.append(
            layers.Conv2D(n_classes, 1, use_bias=i == 0, name=f"head_conv_part{i}")
        )
        part = head_parts[-1](block)
        scores = part if scores is None else layers.Add()([scores, part])
    outputs = layers.Softmax(axis=-1, name="head_softmax", dtype="float32")(scores)
    lean = keras.Model(inputs, outputs, name="fcn_for_prediction")
    for i, layer in enumerate(head_parts):
        part = kernel[:, :, i * filters : (i + 1) * filters]
        layer.set_weights([part, bias] if i == 0 else [part])
    for layer in lean.layers:
        if layer.weights and layer not in head_parts:
            try:
                layer.set_weights(model.get_layer(layer.name).get_weights())
            except ValueError:
                return None
    probe = np.random.default_rng(0).normal(size=(1, 48, 48, n_bands))
    probe = probe.astype("float32")
    expected = np.asarray(model.predict_on_batch(probe))
    if not np.allclose(np.asarray(lean.predict_on_batch(probe)), expected, atol=1e-5):
        return None
    return lean


def with_precision(model, precision):
    """A copy of `model` whose layers compute in a mixed-precision policy.

    `precision` is a Keras policy name (mixed_bfloat16, mixed_float16):
    weights stay float32, layers compute in 16 bits, softmax layers in
    float32 (probabilities keep their precision).
    """

    def clone(layer):
        config = layer.get_config()
        keep = isinstance(layer, layers.Softmax)
        config["dtype"] = "float32" if keep else precision
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def double_conv(x, filters, name):
    """Two 3x3 convolutions, each with batch norm and ReLU (one U-Net level)."""
    for i in (1, 2):
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}"
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(input_shape, n_classes, filters=32, depth=4):
    """U-Net (Ronneberger et al. 2015) with `depth` poolings.

    `filters` at the first level, doubled at each level down; transposed
    convolutions up, each joined with the encoder's features of its level.
    Rows and columns of the input must be multiples of 2**depth.
    """
    inputs = keras.Input(shape=(None, None, input_shape[-1]), name="bands")
    x, skips = inputs, []
    for level in range(depth):
        x = double_conv(x, filters * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = double_conv(x, filters * 2**depth, "bottom")
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(
            filters * 2**level, 2, strides=2, name=f"up{level}_upconv"
        )(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = double_conv(x, filters * 2**level, f"up{level}")
    outputs = classifier_head(x, n_classes)
    return keras.Model(inputs, outputs, name="unet")


def residual_unit(x, filters, strides, name):
    """Pre-activation residual unit (BN, ReLU, 3x3 conv, twice) with a shortcut."""
    shortcut = layers.Conv2D(
        filters, 1, strides=strides, padding="same", name=name + "_shortcut"
    )(x)
    shortcut = layers.BatchNormalization(name=name + "_shortcut_bn")(shortcut)
    y = x
    for i, step in ((1, strides), (2, 1)):
        y = layers.BatchNormalization(name=f"{name}_bn{i}")(y)
        y = layers.ReLU(name=f"{name}_relu{i}")(y)
        y = layers.Conv2D(
            filters, 3, strides=step, padding="same", name=f"{name}_conv{i}"
        )(y)
    return layers.Add(name=name + "_add")([shortcut, y])


def build_resunet(input_shape, n_classes, filters=32, depth=4):
    """Residual U-Net (Zhang, Liu and Wang 2018, IEEE GRSL 15, 749).

    A U-Net whose levels are pre-activation residual units, downsampling by
    strided convolution instead of pooling: it trains faster and deeper
    than the plain U-Net for the same filters. Rows and columns of the
    input must be multiples of 2**depth.
    """
    inputs = keras.Input(shape=(None, None, input_shape[-1]), name="bands")
    x = layers.Conv2D(filters, 3, padding="same", name="stem_conv")(inputs)
    x = residual_unit(x, filters, 1, "down0")
    skips = [x]
    for level in range(1, depth + 1):
        x = residual_unit(x, filters * 2**level, 2, f"down{level}")
        skips.append(x)
    x = skips.pop()
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = residual_unit(x, filters * 2**level, 1, f"up{level}")
    outputs = classifier_head(x, n_classes)
    return keras.Model(inputs, outputs, name="resunet")


ARCHITECTURES = {"fcn": build_fcn, "unet": build_unet, "resunet": build_resunet}


def size_multiple(architecture, params):
    """Rows and columns of an input must be multiples of this number."""
    if architecture in ("unet", "resunet"):
        return 2 ** int(params.get("depth", 4))
    return int(params.get("size_multiple", 1))


def is_custom(architecture):
    """Whether `architecture` names a user's Python file, not a built-in."""
    return architecture not in ARCHITECTURES


def load_custom_builder(path):
    """The build_model function of a user's architecture file."""
    if not os.path.isfile(path):
        raise IannError(
            _("Architecture <{}> is neither one of {} nor a Python file").format(
                path, ", ".join(sorted(ARCHITECTURES))
            )
        )
    spec = importlib.util.spec_from_file_location("iann_custom_architecture", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - any error in the user's file
        raise IannError(
            _("Cannot load architecture file <{}>: {}: {}").format(
                path, type(error).__name__, error
            )
        )
    builder = getattr(module, "build_model", None)
    if not callable(builder):
        raise IannError(
            _(
                "Architecture file <{}> defines no function "
                "build_model(input_shape, n_classes, **params)"
            ).format(path)
        )
    return builder


def build_model(architecture, input_shape, n_classes, **params):
    """Build a model by architecture name or from a user's architecture file."""
    if not is_custom(architecture):
        builder = ARCHITECTURES[architecture]
    else:
        builder = load_custom_builder(architecture)
    params = {k: v for k, v in params.items() if k != "size_multiple"}
    try:
        model = builder(input_shape, n_classes, **params)
    except Exception as error:  # noqa: BLE001 - bad parameters or a bad file
        raise IannError(
            _("Cannot build architecture <{}> with parameters {}: {}: {}").format(
                architecture, params, type(error).__name__, error
            )
        )
    if not isinstance(model, keras.Model):
        raise IannError(
            _("Architecture <{}> returned {}, not a Keras model").format(
                architecture, type(model).__name__
            )
        )
    return model


def check_output_shape(model, architecture, patch_size, n_bands, n_classes):
    """Clear error unless a patch gives (patch_size, patch_size, n_classes)."""
    probe = np.zeros((1, patch_size, patch_size, n_bands), dtype="float32")
    try:
        shape = tuple(np.asarray(model.predict_on_batch(probe)).shape)
    except Exception as error:  # noqa: BLE001 - any failure of the user's model
        raise IannError(
            _("Architecture <{}> cannot take a {} x {} x {} patch: {}").format(
                architecture, patch_size, patch_size, n_bands, error
            )
        )
    want = (1, patch_size, patch_size, n_classes)
    if shape != want:
        raise IannError(
            _(
                "Architecture <{}> gives output of shape {} for a {} x {} patch "
                "of {} bands; a model for i.ann must give {} (one probability "
                "per class and input cell)"
            ).format(architecture, shape, patch_size, patch_size, n_bands, want)
        )


# Receptive field from the layer graph. Along one axis, each tensor carries
# for every position the lowest and highest input position it depends on;
# layers map these intervals the way they map positions.

_EMPTY_LOW, _EMPTY_HIGH = np.iinfo(np.int64).max, np.iinfo(np.int64).min
_ELEMENTWISE = (
    layers.BatchNormalization,
    layers.ReLU,
    layers.Activation,
    layers.Softmax,
    layers.Dropout,
    layers.SpatialDropout2D,
    layers.LayerNormalization,
    layers.GroupNormalization,
    layers.LeakyReLU,
    layers.PReLU,
    layers.Identity,
)
_MERGING = (
    layers.Add,
    layers.Concatenate,
    layers.Multiply,
    layers.Average,
    layers.Maximum,
    layers.Subtract,
)


def _gather(low, high, index):
    """Intervals at positions `index` (k, out); out-of-range positions add none."""
    valid = (index >= 0) & (index < len(low))
    clipped = np.clip(index, 0, len(low) - 1)
    lo = np.where(valid, low[clipped], _EMPTY_LOW).min(axis=0)
    hi = np.where(valid, high[clipped], _EMPTY_HIGH).max(axis=0)
    return lo, hi


def _window(low, high, kernel, stride, dilation, padding):
    """A sliding window (convolution, pooling) along one axis."""
    n = len(low)
    extent = (kernel - 1) * dilation + 1
    if padding == "same":
        out = -(-n // stride)
        before = max((out - 1) * stride + extent - n, 0) // 2
    else:
        out = (n - extent) // stride + 1
        before = 0
    starts = np.arange(out) * stride - before
    index = starts[None, :] + (np.arange(kernel) * dilation)[:, None]
    return _gather(low, high, index)


def _upsampled(low, high, size):
    index = (np.arange(len(low) * size) // size)[None, :]
    return _gather(low, high, index)


def _transposed(low, high, kernel, stride):
    """Conv2DTranspose with 'valid' padding along one axis."""
    n_out = (len(low) - 1) * stride + kernel
    out = np.arange(n_out)
    index = np.stack([(out - j) // stride for j in range(kernel)])
    exact = np.stack([(out - j) % stride == 0 for j in range(kernel)])
    return _gather(low, high, np.where(exact, index, -1))


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _layer_intervals(layer, inputs):
    """Output intervals of one layer, or None for a layer of unknown kind."""
    if isinstance(layer, _MERGING):
        return (
            np.min([i[0] for i in inputs], axis=0),
            np.max([i[1] for i in inputs], axis=0),
        )
    ((low, high),) = inputs
    config = layer.get_config()
    if isinstance(layer, _ELEMENTWISE):
        return low, high
    if isinstance(layer, layers.ZeroPadding2D):
        before, after = config["padding"][0]
        empty_low = np.full(before, _EMPTY_LOW)
        empty_high = np.full(before, _EMPTY_HIGH)
        return (
            np.concatenate([empty_low, low, np.full(after, _EMPTY_LOW)]),
            np.concatenate([empty_high, high, np.full(after, _EMPTY_HIGH)]),
        )
    if isinstance(layer, layers.Conv2DTranspose):
        if config["padding"] != "valid" or _first(config["dilation_rate"]) != 1:
            return None
        return _transposed(
            low, high, _first(config["kernel_size"]), _first(config["strides"])
        )
    if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
        return _window(
            low,
            high,
            _first(config["kernel_size"]),
            _first(config["strides"]),
            _first(config["dilation_rate"]),
            config["padding"],
        )
    if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
        return _window(
            low,
            high,
            _first(config["pool_size"]),
            _first(config["strides"]),
            1,
            config["padding"],
        )
    if isinstance(layer, layers.UpSampling2D):
        return _upsampled(low, high, _first(config["size"]))
    return None


def computed_reach(model, length=256):
    """Largest distance in cells between an output cell and an input it uses.

    Computed along the rows from the layer graph (square kernels assumed,
    as in all built-in architectures), over every output position of a
    `length`-cell input, so every alignment of poolings and strides counts.
    None when the model has a layer of a kind not known here.
    """
    inputs = model.inputs[0]
    positions = np.arange(length, dtype=np.int64)
    intervals = {id(inputs): (positions, positions)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer):
                continue
            try:
                parents = [intervals[id(t)] for t in node.input_tensors]
            except KeyError:
                return None
            result = _layer_intervals(layer, parents)
            if result is None:
                return None
            for tensor in node.output_tensors:
                intervals[id(tensor)] = result
    low, high = intervals[id(model.outputs[0])]
    if len(low) != length:
        return None
    reach = np.maximum(positions - low, high - positions)
    return int(reach.max())


def _changed_cells(model, size, n_bands, cell, seed):
    """Output cells changed by a change of the input cell `cell`."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, size, size, n_bands)).astype("float32")
    changed = np.zeros((size, size), dtype=bool)
    reference = np.asarray(model.predict_on_batch(base))
    for delta in (-1000.0, 1000.0):
        probe = base.copy()
        probe[0, cell[0], cell[1], :] += delta
        out = np.asarray(model.predict_on_batch(probe))
        changed |= np.abs(out - reference).max(axis=(0, 3)) > 0
    return changed


def measured_reach(model, n_bands, multiple=1, seed=0, max_size=2048):
    """Largest distance between a changed output cell and a perturbed input cell.

    Input cells are perturbed with large values of both signs, at every
    alignment to `multiple` (poolings and strides make the reach depend on
    it); the probe grows until no change touches its edges.
    """
    size = 65
    while size <= max_size:
        padded = -(-size // multiple) * multiple
        reach, touches_edge = 0, False
        for shift in range(multiple):
            cell = (padded // 2 + shift, padded // 2 + shift)
            changed = _changed_cells(model, padded, n_bands, cell, seed)
            rows = np.flatnonzero(changed.any(axis=1))
            cols = np.flatnonzero(changed.any(axis=0))
            if len(rows) == 0:
                continue
            if rows[0] == 0 or cols[0] == 0 or max(rows[-1], cols[-1]) == padded - 1:
                touches_edge = True
                break
            reach = max(
                reach,
                cell[0] - rows[0],
                rows[-1] - cell[0],
                cell[1] - cols[0],
                cols[-1] - cell[1],
            )
        if not touches_edge:
            return int(reach)
        size = size * 2 - 1
    return max_size // 2


def receptive_field(model, n_bands, multiple=1):
    """Receptive field (2 reach + 1 cells) and how it was found."""
    length = -(-256 // multiple) * multiple
    while length <= 65536:
        reach = computed_reach(model, length)
        if reach is None:
            break
        if 2 * (reach + multiple) < length:
            return 2 * reach + 1, "computed"
        length *= 2
    return 2 * measured_reach(model, n_bands, multiple) + 1, "measured"


def tiling_margin(field, multiple=1):
    """Margin read around each tile: half the field, up to the size multiple.

    Tiles and margins that are multiples of `multiple` keep every tile's
    poolings on the same grid as a whole-region prediction.
    """
    half = field // 2
    return -(-half // multiple) * multiple
