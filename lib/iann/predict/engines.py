"""Engines that run a bundle's network on batches of tiles.

- keras: the bundle's model.keras, in the Keras backend (TensorFlow by
  default), on a GPU when the backend sees one; the fcn in its
  prediction form (nn/architectures.py fcn_for_prediction).
- onnx: the bundle's model.onnx in ONNX Runtime on the CPU.
- openvino: the same model.onnx in OpenVINO on the CPU.

The ONNX engines also run in a reduced precision where the bundle's check
on this kind of CPU passed (predict/precision.py): int8 (model.int8.onnx,
both engines) and bfloat16 (model.onnx in OpenVINO's bfloat16).

Every engine takes (tiles, bands, rows, cols) float32 standardised tiles
and returns (tiles, classes, rows, cols) float32 probabilities: channels
first, as the bands are read and model.onnx is exported (the Keras model,
channels last, is wrapped in a transposition the backend computes, on the
GPU when there is one). `predict_classes` gives the index of each cell's
most probable class instead, (tiles, rows, cols), computed by the engine
itself (on the GPU, or in the CPU engine's threads): a job that writes
the class map alone needs no probabilities out of the network. The ONNX
engines are chosen only when the bundle's model.onnx gives, on the probe
recorded at export time, the probabilities model.keras gave (and
model.keras is still the file it was exported from): a missing, truncated
or stale model.onnx falls back to Keras with a warning, never a wrong map.
"""

import importlib
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from iann.errors import IannError
from iann.formats.bundle import INT8_FILE, MODEL_FILE, ONNX_FILE, sha256_of
from iann.nn.devices import accelerators, gpu_present
from iann.predict.onnx_export import (
    CLASSES_OUTPUT,
    PROBE_TOLERANCE,
    probe_input,
    engine_model,
)

ENGINES = ("auto", "keras", "onnx", "openvino")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


class KerasEngine:
    """The Keras model itself (the fcn in its leaner prediction form)."""

    name = "keras"

    def __init__(self, model, lean=True, class_scale=None):
        from iann.nn.architectures import fcn_for_prediction
        from iann.predict.onnx_export import channels_first_model

        form = (fcn_for_prediction(model) if lean else None) or model
        self.model = channels_first_model(form, model.input_shape[-1])
        self.classes_model = None
        self.class_scale = class_scale

    def predict(self, tiles):
        out = self.model.predict_on_batch(tiles)
        return np.asarray(out, dtype=np.float32)

    def predict_classes(self, tiles):
        if self.classes_model is None:
            import keras

            scale = (
                None
                if self.class_scale is None
                else keras.ops.reshape(
                    keras.ops.convert_to_tensor(self.class_scale, "float32"),
                    (1, -1, 1, 1),
                )
            )

            def decide(p):
                # The decision rule (predict/decision.py): argmax(p * scale).
                if scale is not None:
                    p = keras.ops.cast(p, "float32") * scale
                return keras.ops.argmax(p, axis=1)

            argmax = keras.layers.Lambda(decide, name="classes")
            self.classes_model = keras.Model(
                self.model.input, argmax(self.model.output)
            )
        return np.asarray(self.classes_model.predict_on_batch(tiles))


class OnnxRuntimeEngine:
    """model.onnx in ONNX Runtime, with `threads` threads for each tile."""

    name = "onnx"

    def __init__(self, path, threads, class_scale=None, bfloat16=False):
        import onnxruntime

        if bfloat16:
            raise IannError(_("ONNX Runtime has no bfloat16 convolutions"))

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # Memory patterns are planned per input shape, and a job's tiles come
        # in several (edges, margins): without them the module's peak fell
        # from 3.6 GB to 1.9 GB for fcn-32 on 1074-cell tiles, no slower.
        options.enable_mem_pattern = False
        self.session = onnxruntime.InferenceSession(
            engine_model(path, class_scale),
            options,
            providers=["CPUExecutionProvider"],
        )
        self.input = self.session.get_inputs()[0].name
        self.probabilities = self.session.get_outputs()[0].name
        self.threads = threads

    def predict(self, tiles):
        (out,) = self.session.run([self.probabilities], {self.input: tiles})
        return out

    def predict_classes(self, tiles):
        (out,) = self.session.run([CLASSES_OUTPUT], {self.input: tiles})
        return out


class OpenVinoEngine:
    """model.onnx compiled by OpenVINO for the CPU, with `threads` threads."""

    name = "openvino"

    def __init__(self, path, threads, class_scale=None, bfloat16=False):
        import io

        import openvino

        core = openvino.Core()
        # On CPUs with bfloat16 units (AVX512_BF16, AMX) OpenVINO computes in
        # bfloat16 unless told otherwise: probabilities off by about 1e-2,
        # taken only where the bundle's check allows (predict/precision.py).
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if bfloat16 else "f32",
        }
        model = core.read_model(io.BytesIO(engine_model(path, class_scale)))
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.threads = threads

    def predict(self, tiles):
        out = self.request.infer({0: tiles})
        return np.asarray(out[self.compiled.output(0)])

    def predict_classes(self, tiles):
        out = self.request.infer({0: tiles})
        return np.asarray(out[self.compiled.output(CLASSES_OUTPUT)])


ENGINE_TITLES = {
    "keras": "Keras",
    "onnx": "ONNX Runtime",
    "openvino": "OpenVINO",
}


@dataclass
class EngineChoice:
    """The engine a job runs, why, and what the user should be warned of."""

    name: str
    reason: str
    warning: str = None
    precision: str = "float32"  # of the ONNX engines (predict/precision.py)

    def describe(self, threads):
        title = ENGINE_TITLES[self.name]
        if self.name == "keras":
            return "{} ({})".format(title, self.reason)
        per_process = (
            _("1 thread per process")
            if threads == 1
            else _("{} threads per process").format(threads)
        )
        model = {
            "int8": _("{} (int8)").format(INT8_FILE),
            "bfloat16": _("model.onnx in bfloat16"),
        }.get(self.precision, ONNX_FILE)
        return "{} on {}, {} ({})".format(title, model, per_process, self.reason)


def engine_version(name):
    """The version of an engine's package (for the records of checks)."""
    module = importlib.import_module(ENGINE_PACKAGES.get(name, name))
    return getattr(module, "__version__", None) or module.get_version()


def installed(package):
    """Whether a Python package can be imported (not only found)."""
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


# Lines of an engine's error that say where in its C++ sources it was
# raised, not what went wrong (OpenVINO gives several of them first).
SOURCE_LOCATION = re.compile(
    r"^(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)$"
)


def engine_error_text(error, limit=300):
    """An engine's error for a user: what went wrong, in whole words."""
    lines = [line.strip() for line in str(error).splitlines()]
    text = " ".join(line for line in lines if line and not SOURCE_LOCATION.match(line))
    text = text or type(error).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def onnx_problem(folder, metadata, engine_name, threads=1):
    """Why the bundle's model.onnx cannot stand in for model.keras, or None.

    Runs the engine on the probe recorded at export time and compares with
    the probabilities model.keras gave then.
    """
    record = metadata.onnx
    path = os.path.join(folder, ONNX_FILE)
    if not record or not os.path.isfile(path):
        return _("the bundle has no {}").format(ONNX_FILE)
    if metadata.imported:
        if sha256_of(path) != record["sha256"]:
            return _("{} is not the file that was imported").format(ONNX_FILE)
    elif sha256_of(os.path.join(folder, MODEL_FILE)) != record["keras_sha256"]:
        return _("{} was exported from another model.keras").format(ONNX_FILE)
    try:
        engine = ENGINE_CLASSES[engine_name](path, threads)
        probe = probe_input(record["probe_shape"], int(metadata.size_multiple))
        # The record holds the probabilities channels last (of a window of
        # the probe for an imported model).
        got = engine.predict(probe).transpose(0, 2, 3, 1)
        if record.get("probe_window"):
            start, stop = record["probe_window"]
            got = got[:, start:stop, start:stop]
    except Exception as error:  # noqa: BLE001 - a broken file, in any way
        return _("{} cannot be run: {}").format(ONNX_FILE, engine_error_text(error))
    expected = np.asarray(record["probe_output"], dtype=np.float32)
    if got.shape != expected.shape:
        return _("{} gives output of shape {}, model.keras {}").format(
            ONNX_FILE, got.shape, expected.shape
        )
    difference = float(np.abs(got - expected).max())
    if not difference <= PROBE_TOLERANCE:
        return _("{} disagrees with model.keras (by {:.2g})").format(
            ONNX_FILE, difference
        )
    return None


def choose_engine(folder, metadata, requested="auto", precision="float32", gpu=False):
    """Which engine classifies with the bundle in `folder`, and why.

    `auto` takes OpenVINO, else ONNX Runtime, when installed, when the
    bundle's model.onnx passes its probe, when no GPU is in use (`gpu`:
    the user asked for GPU workers) and the precision is float32
    (model.onnx is float32); Keras otherwise. A model.onnx that fails its
    probe gives a warning and Keras, never a wrong map.
    """
    if metadata.imported:
        return imported_model_engine(folder, metadata, requested, precision, gpu)
    if requested == "keras":
        return EngineChoice("keras", _("asked for"))
    if requested in ENGINE_CLASSES:
        package = ENGINE_PACKAGES[requested]
        if not installed(package):
            raise IannError(
                _(
                    "engine={} needs the Python package <{}>; install it with "
                    "pip install {}"
                ).format(requested, package, package)
            )
        if precision != "float32":
            raise IannError(
                _(
                    "engine={} runs model.onnx in float32; precision={} needs Keras"
                ).format(requested, precision)
            )
        problem = onnx_problem(folder, metadata, requested)
        if problem:
            return fallback(folder, problem)
        return EngineChoice(requested, _("asked for"))
    candidates = [e for e in AUTO_ORDER if installed(ENGINE_PACKAGES[e])]
    if precision != "float32":
        return EngineChoice("keras", _("precision {}").format(precision))
    if not candidates:
        return EngineChoice(
            "keras", _("neither OpenVINO nor ONNX Runtime is installed")
        )
    if gpu or (gpu_present() and accelerators()):
        return EngineChoice("keras", _("GPU"))
    problem = onnx_problem(folder, metadata, candidates[0])
    if problem is None:
        return EngineChoice(candidates[0], _("the fastest on a CPU"))
    if metadata.onnx is None:
        return EngineChoice("keras", problem)
    return fallback(folder, problem)


def imported_model_engine(folder, metadata, requested, precision, gpu):
    """An imported model runs on an ONNX engine: the one asked for, or the
    first installed one that passes the probe (OpenVINO, then ONNX Runtime)."""
    if requested == "keras" or precision != "float32":
        raise IannError(
            _(
                "Model bundle <{}> was imported from an ONNX model: it runs with "
                "engine=onnx or engine=openvino, in float32"
            ).format(folder)
        )
    names = [requested] if requested in ENGINE_CLASSES else list(AUTO_ORDER)
    problems = []
    for name in names:
        if not installed(ENGINE_PACKAGES[name]):
            problems.append(_("{} is not installed").format(ENGINE_PACKAGES[name]))
            continue
        problem = onnx_problem(folder, metadata, name)
        if problem is None:
            reason = _("asked for") if requested == name else _("imported model")
            warning = (
                _(
                    "Model bundle <{}> was imported from an ONNX model: {} on the CPU"
                ).format(folder, ENGINE_TITLES[name])
                if gpu
                else None
            )
            return EngineChoice(name, reason, warning)
        problems.append("{}: {}".format(ENGINE_TITLES[name], problem))
    raise IannError(
        _("Model bundle <{}> cannot be run: {}").format(folder, "; ".join(problems))
    )


def fallback(folder, problem):
    warning = _("Bundle <{}>: {}; classifying with Keras").format(folder, problem)
    return EngineChoice("keras", problem, warning)


def load_engine(
    folder, metadata, name, threads=1, precision="float32", class_scale=None
):
    """The engine `name` (keras, onnx, openvino) of the bundle in `folder`;
    its class maps multiply the probabilities by `class_scale` (the
    decision rule, predict/decision.py) before the argmax.

    int8 and bfloat16 run only where the bundle's check passed on this
    kind of CPU: a worker on another kind than the module's machine
    computes in float32 (the reference the check compares with) and says so.
    """
    if name == "keras":
        from iann.nn.saving import load_model

        model = load_model(folder, metadata, precision)
        return KerasEngine(model, lean=precision == "float32", class_scale=class_scale)
    path = os.path.join(folder, ONNX_FILE)
    if precision in ("int8", "bfloat16"):
        from iann.predict.precision import cpu_kind, usable_check

        check, problem = usable_check(folder, metadata, precision, name, cpu_kind())
        if check is None:
            # On stderr as GRASS writes warnings: this may be a Dask worker.
            print(
                _(
                    "WARNING: Bundle <{}>: {} not used on {} ({}); computing in float32"
                ).format(folder, precision, os.uname().nodename, problem),
                file=sys.stderr,
                flush=True,
            )
            precision = "float32"
        elif precision == "int8":
            path = os.path.join(folder, INT8_FILE)
    return ENGINE_CLASSES[name](
        path, threads, class_scale, bfloat16=precision == "bfloat16"
    )


ENGINE_CLASSES = {"onnx": OnnxRuntimeEngine, "openvino": OpenVinoEngine}
ENGINE_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}
# By the figures of bench/bench_classify.py on a 2-core CPU
# (docs/measurements.md, Engines).
AUTO_ORDER = ("openvino", "onnx")
