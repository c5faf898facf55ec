"""The receptive field of a network: the context an output cell depends on.

Computed from the layer graph where every layer is a known kind, and
measured by perturbing input cells otherwise; classification reads that
much margin around each tile (predict/tiling.py tiling_margin), so the tiles join
without seams.
"""

import keras
import numpy as np
from keras import layers

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


_WINDOWED = (
    layers.ZeroPadding2D,
    layers.Conv2DTranspose,
    layers.Conv2D,
    layers.DepthwiseConv2D,
    layers.MaxPooling2D,
    layers.AveragePooling2D,
    layers.UpSampling2D,
)


def _layer_intervals(layer, inputs):
    """Output intervals of one layer, or None for a layer of unknown kind."""
    if isinstance(layer, _MERGING):
        return (
            np.min([i[0] for i in inputs], axis=0),
            np.max([i[1] for i in inputs], axis=0),
        )
    if len(inputs) != 1:
        return None
    ((low, high),) = inputs
    if isinstance(layer, _ELEMENTWISE):
        return low, high
    if not isinstance(layer, _WINDOWED):
        return None
    config = layer.get_config()
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
    return _upsampled(low, high, _first(config["size"]))


def computed_reach(model, length=256):
    """Largest distance in cells between an output cell and an input it uses.

    Computed along the rows from the layer graph (square kernels assumed,
    as in all built-in architectures), over every output position of a
    `length`-cell input, so every alignment of poolings and strides counts.
    The graph is read through each layer's input and output tensors (public
    Keras API), each layer once its inputs are known. None when the model
    has a layer of a kind not known here, or a layer whose outputs cannot
    be traced that way (a layer called twice, an operation that is not a
    layer): the field is then measured.
    """
    positions = np.arange(length, dtype=np.int64)
    intervals = {id(model.inputs[0]): (positions, positions)}
    pending = [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    while pending:
        waiting = []
        for layer in pending:
            try:
                inputs = keras.tree.flatten(layer.input)
                outputs = keras.tree.flatten(layer.output)
            except (AttributeError, ValueError):
                return None
            if any(id(t) not in intervals for t in inputs):
                waiting.append(layer)
                continue
            result = _layer_intervals(layer, [intervals[id(t)] for t in inputs])
            if result is None:
                return None
            for tensor in outputs:
                intervals[id(tensor)] = result
        if len(waiting) == len(pending):
            return None
        pending = waiting
    if id(model.outputs[0]) not in intervals:
        return None
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
