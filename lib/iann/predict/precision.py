"""Reduced precisions of the CPU engines, each used only where it was checked.

- int8: model.int8.onnx, made from model.onnx by ONNX Runtime's static
  quantisation in QDQ form: weights int8 per output channel, activations
  uint8, calibrated (min-max) on training patches. Weights keep 7 bits of
  range (reduce_range): CPUs without VNNI sum pairs of u8 x s8 products in
  16 bits, which full-range weights can saturate. One file runs on
  OpenVINO and ONNX Runtime, on every CPU kind.
- bfloat16: model.onnx itself, compiled by OpenVINO in bfloat16, on CPUs
  with native bfloat16 (AVX512_BF16, AMX; BF16 on ARM).

The check that decides: on a dataset's validation patches the reduced
precision's classes agree with float32's on at least AGREEMENT_MINIMUM of
the cells, and kappa against the validation labels drops by at most
KAPPA_DROP_MAXIMUM. A check is made by i.ann.train (train/precision.py)
and stored in the bundle per engine and kind of CPU (cpu_kind): the
numbers of int8 and bfloat16 depend on the CPU's instructions, so a check
holds only on CPUs with the same ones. i.ann.classify takes a reduced
precision only where a check on this kind of CPU passed
(choose_precision), and float32 otherwise, with a warning.
"""

import datetime
import os
import time

import numpy as np

from iann.errors import IannError
from iann.formats.bundle import INT8_FILE, ONNX_FILE, sha256_of

REDUCED_PRECISIONS = ("int8", "bfloat16")
# The check of the issue that asked for reduced precisions (30).
AGREEMENT_MINIMUM = 0.995
KAPPA_DROP_MAXIMUM = 0.005
# Fewer training patches than this cannot stand for the range of a
# network's activations.
MINIMUM_CALIBRATION_PATCHES = 16
# Validation cells a check runs on, at most (every k-th patch beyond).
MAXIMUM_CHECK_CELLS = 4_000_000
# The tile the speed of a precision is measured on.
SPEED_TILE = 512
# The CPU's instructions that decide how int8 and bfloat16 are computed.
PRECISION_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
)
NATIVE_BFLOAT16 = ("avx512_bf16", "amx_bf16", "bf16")
# Engines of each reduced precision (ONNX Runtime's CPU kernels have no
# bfloat16 convolution).
PRECISION_ENGINES = {"int8": ("openvino", "onnx"), "bfloat16": ("openvino",)}


def cpu_kind(cpuinfo="/proc/cpuinfo"):
    """This machine's CPU: {"model", "flags", "kind"}; `kind` names the
    instructions in PRECISION_FLAGS it has (checks hold per kind)."""
    model, flags = "", set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _sep, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    present = [flag for flag in PRECISION_FLAGS if flag in flags]
    kind = " ".join([os.uname().machine] + present)
    return {"model": model or os.uname().machine, "flags": present, "kind": kind}


def native_bfloat16(cpu):
    return any(flag in cpu["flags"] for flag in NATIVE_BFLOAT16)


def engine_form(onnx_path):
    """model.onnx as an onnx.ModelProto in the engines' form: free height
    and width, no Deepness no-data step, no i.ann properties."""
    import onnx

    from iann.predict.onnx_export import set_spatial_dimensions, without_nodata_fill

    model = onnx.load(onnx_path)
    without_nodata_fill(model)
    set_spatial_dimensions(model, None)
    del model.metadata_props[:]
    return model


def quantise(onnx_path, output, tiles, batch=16):
    """Write the int8 form of `onnx_path` to `output`, calibrated on
    `tiles` (n, bands, rows, cols) standardised float32; its record."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = engine_form(onnx_path)
    name = model.graph.input[0].name

    class Tiles(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(tiles):
                return None
            self.start += batch
            return {name: tiles[self.start - batch : self.start]}

    started = time.perf_counter()
    prepared = output + ".float.onnx"
    onnx.save(model, prepared)
    try:
        quant_pre_process(prepared, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            output,
            Tiles(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        for path in (prepared, prepared + ".data"):
            if os.path.exists(path):
                os.remove(path)
    import onnxruntime

    return {
        "file": INT8_FILE,
        "quantiser": "onnxruntime " + onnxruntime.__version__,
        "method": "ONNX Runtime quantize_static, QDQ: int8 weights per "
        "channel (reduce_range), uint8 activations, min-max calibration",
        "seconds": round(time.perf_counter() - started, 2),
    }


def classes_of(engine, tiles, batch=16):
    return np.concatenate(
        [
            np.argmax(engine.predict(tiles[start : start + batch]), axis=1)
            for start in range(0, len(tiles), batch)
        ]
    )


def seconds_per_tile(engine, bands, repeats=3):
    """The engine's fastest of `repeats` runs on a SPEED_TILE tile."""
    tile = (
        np.random.default_rng(0)
        .standard_normal((1, bands, SPEED_TILE, SPEED_TILE))
        .astype(np.float32)
    )
    engine.predict(tile)
    times = []
    for _repeat in range(repeats):
        started = time.perf_counter()
        engine.predict(tile)
        times.append(time.perf_counter() - started)
    return min(times)


def kappa_of(labels, classes, n_classes):
    from iann.accuracy.metrics import matrix_scores
    from iann.predict.decision import confusion

    return matrix_scores(confusion(labels, classes, n_classes))["kappa"]


def check_precision(
    folder,
    precision,
    engine_name,
    tiles,
    labels,
    unlabelled,
    threads,
    cpu,
    int8_path=None,
    float32_classes=None,
):
    """The check of `precision` on `engine_name` for the bundle in `folder`:
    classes of the validation `tiles` against float32's, and kappa against
    `labels` (`unlabelled` cells left out). A record for the bundle.
    `int8_path`: the int8 model, when not yet the bundle's own.
    `float32_classes`: a dict of float32's classes by engine, filled here,
    so that checks of several precisions on one engine run float32 once."""
    from iann.predict.engines import ENGINE_CLASSES, engine_version

    path = os.path.join(folder, ONNX_FILE)
    engine_class = ENGINE_CLASSES[engine_name]
    reference = engine_class(path, threads)
    reduced = engine_class(
        (int8_path or os.path.join(folder, INT8_FILE)) if precision == "int8" else path,
        threads,
        bfloat16=precision == "bfloat16",
    )
    if float32_classes is None:
        float32_classes = {}
    if engine_name not in float32_classes:
        float32_classes[engine_name] = classes_of(reference, tiles)
    float32 = float32_classes[engine_name]
    got = classes_of(reduced, tiles)
    n_classes = int(reference.predict(tiles[:1]).shape[1])
    keep = labels != unlabelled
    truth = labels[keep].astype(np.int64)
    kappa_float32 = kappa_of(truth, float32[keep], n_classes)
    kappa = kappa_of(truth, got[keep], n_classes)
    agreement = float(np.mean(got == float32))
    speed_ratio = seconds_per_tile(reference, tiles.shape[1]) / seconds_per_tile(
        reduced, tiles.shape[1]
    )
    return {
        "precision": precision,
        "engine": engine_name,
        "engine_version": engine_version(engine_name),
        "cpu": cpu["kind"],
        "cpu_model": cpu["model"],
        "cells": int(got.size),
        "labelled_cells": int(truth.size),
        "agreement": round(agreement, 6),
        "kappa_float32": round(float(kappa_float32), 6),
        "kappa": round(float(kappa), 6),
        "passed": bool(
            agreement >= AGREEMENT_MINIMUM
            and kappa_float32 - kappa <= KAPPA_DROP_MAXIMUM
        ),
        "speed_ratio": round(speed_ratio, 3),
        "checked": datetime.date.today().isoformat(),
    }


def check_text(check):
    return _(
        "classes agree with float32 on {:.2%} of the validation cells (at "
        "least {:.1%} needed), kappa {:.4f} against float32's {:.4f} (at most "
        "{} lower), {:.2f}x float32's speed"
    ).format(
        check["agreement"],
        AGREEMENT_MINIMUM,
        check["kappa"],
        check["kappa_float32"],
        KAPPA_DROP_MAXIMUM,
        check["speed_ratio"],
    )


def checks_for(metadata, precision, engine_name, kind):
    """The bundle's checks of `precision` on `engine_name` made on CPUs of `kind`."""
    checks = (metadata.reduced_precision or {}).get("checks", [])
    return [
        c
        for c in checks
        if c["precision"] == precision
        and c["engine"] == engine_name
        and c["cpu"] == kind
    ]


def int8_problem(folder, metadata):
    """Why the bundle's model.int8.onnx cannot be used, or None."""
    record = (metadata.reduced_precision or {}).get("int8")
    path = os.path.join(folder, INT8_FILE)
    if not record or not os.path.isfile(path):
        return _("it has no {}").format(INT8_FILE)
    if sha256_of(path) != record["sha256"]:
        return _("{} is not the file that was checked").format(INT8_FILE)
    if sha256_of(os.path.join(folder, ONNX_FILE)) != record["onnx_sha256"]:
        return _("{} was made from another {}").format(INT8_FILE, ONNX_FILE)
    return None


def usable_check(folder, metadata, precision, engine_name, cpu):
    """The passed check that lets `precision` run on `engine_name` on this
    CPU, or None and why not."""
    if precision == "int8":
        problem = int8_problem(folder, metadata)
        if problem:
            return None, problem
    if precision == "bfloat16" and not native_bfloat16(cpu):
        return None, _("this CPU has no native bfloat16 ({})").format(cpu["kind"])
    checks = checks_for(metadata, precision, engine_name, cpu["kind"])
    if not checks:
        kinds = sorted(
            {
                c["cpu"]
                for c in (metadata.reduced_precision or {}).get("checks", [])
                if c["precision"] == precision
            }
        )
        return None, _("it was not checked on this kind of CPU ({}){}").format(
            cpu["kind"],
            _("; checked on: {}").format("; ".join(kinds)) if kinds else "",
        )
    check = checks[-1]
    if not check["passed"]:
        return None, _("its check on this kind of CPU failed: {}").format(
            check_text(check)
        )
    return check, None


def prepare_command(folder, metadata, precision):
    return "i.ann.train export={} input={} inference_precision={}".format(
        folder, (metadata.dataset or {}).get("path") or "DATASET", precision
    )


def choose_precision(folder, metadata, requested, engine_name, gpu):
    """The precision a job runs in: (precision, why, warning or None).

    `requested`: float32, int8, bfloat16 or auto (a Keras mixed precision
    is passed through); `engine_name`: the engine chosen for float32;
    `gpu`: the job runs on GPUs.
    """
    if requested not in REDUCED_PRECISIONS + ("auto",):
        return requested, None, None
    keras_mixed = {"int8": "", "bfloat16": " (or mixed_bfloat16)"}
    if gpu:
        if requested == "auto":
            return "float32", _("GPU"), None
        raise IannError(
            _(
                "precision={} runs on the CPU engines only, not on GPUs; on a GPU "
                "use precision=mixed_float16{}"
            ).format(requested, keras_mixed[requested])
        )
    if engine_name == "keras":
        if requested == "auto":
            return "float32", _("the Keras engine"), None
        raise IannError(
            _(
                "precision={} runs on OpenVINO or ONNX Runtime, not on the Keras "
                "engine (bundle <{}>)"
            ).format(requested, folder)
        )
    cpu = cpu_kind()
    problem = int8_problem(folder, metadata) if requested == "int8" else None
    if problem:
        raise IannError(
            _(
                "Model bundle <{}> has no checked int8 model ({}); add one with: {}"
            ).format(folder, problem, prepare_command(folder, metadata, "int8"))
        )
    if requested == "bfloat16" and engine_name not in PRECISION_ENGINES["bfloat16"]:
        raise IannError(
            _(
                "precision=bfloat16 runs on OpenVINO (engine=openvino or auto), "
                "not on {}"
            ).format(engine_name)
        )
    candidates = [requested] if requested != "auto" else list(REDUCED_PRECISIONS)
    usable, refused = [], []
    for precision in candidates:
        if engine_name not in PRECISION_ENGINES[precision]:
            continue
        check, problem = usable_check(folder, metadata, precision, engine_name, cpu)
        if check:
            usable.append((check["speed_ratio"], precision, check))
        elif requested != "auto" or "failed" in problem:
            refused.append((precision, problem))
    warning = "; ".join(
        _("Bundle <{}>: {} refused, {}").format(folder, precision, problem)
        for precision, problem in refused
    )
    usable = [u for u in usable if u[0] > 1 or requested != "auto"]
    if not usable:
        if warning:
            warning += _("; classifying in float32")
        return "float32", _("no reduced precision checked here"), warning or None
    _ratio, precision, check = max(usable)
    why = _("checked on this kind of CPU ({}): {}").format(
        cpu["kind"], check_text(check)
    )
    return precision, why, warning or None
