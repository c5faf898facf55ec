"""Reduced precisions of a bundle, made and checked on a dataset's patches.

At the end of training, or for an existing bundle (`i.ann.train export=
input= inference_precision=`): the int8 model calibrated on training
patches, and the check of each reduced precision on the validation
patches, on this machine's kind of CPU (predict/precision.py). A check
made on another kind of CPU is kept, so that one bundle can hold the
checks of every kind of machine it runs on.
"""

import os

import numpy as np

import grass.script as gs

from iann.errors import IannError
from iann.formats.bundle import (
    INT8_FILE,
    ONNX_FILE,
    read_bundle_metadata,
    sha256_of,
    write_metadata,
)
from iann.formats.dataset import load_dataset
from iann.nn.normalise import bundle_transform, standardise
from iann.predict.engines import (
    ENGINE_PACKAGES,
    ENGINE_TITLES,
    installed,
    onnx_problem,
)
from iann.predict.precision import (
    MAXIMUM_CHECK_CELLS,
    MINIMUM_CALIBRATION_PATCHES,
    PRECISION_ENGINES,
    REDUCED_PRECISIONS,
    check_precision,
    check_text,
    cpu_kind,
    int8_problem,
    native_bfloat16,
    quantise,
)
from iann.train.decision import dataset_bands_of


def network_tiles(images, indices, transform):
    """Patches (n, rows, cols, bands) as the engines take them: the
    bundle's bands, standardised, channels first."""
    mean, std = transform
    x = standardise(np.asarray(images)[..., indices], mean, std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def calibration_tiles(arrays, indices, transform, patches, seed):
    """`patches` training patches drawn with `seed`, as network tiles."""
    images = arrays["train_images"]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), min(patches, len(images)), replace=False))
    return network_tiles(images[chosen], indices, transform)


def check_data(arrays, indices, transform):
    """Validation tiles and labels, every k-th patch beyond MAXIMUM_CHECK_CELLS."""
    images, labels = arrays["validation_images"], arrays["validation_labels"]
    cells = images.shape[1] * images.shape[2]
    step = max(1, -(-len(images) * cells // MAXIMUM_CHECK_CELLS))
    return (
        network_tiles(images[::step], indices, transform),
        np.asarray(labels[::step]),
    )


def check_inputs(bundle, dataset, metadata, data_meta, arrays, precisions):
    """Clear errors for what cannot be made or checked."""
    unknown = [p for p in precisions if p not in REDUCED_PRECISIONS]
    if unknown:
        raise IannError(_("Unknown inference precision <{}>").format(unknown[0]))
    if metadata.imported:
        raise IannError(
            _(
                "Bundle <{}> was imported from an ONNX model: its reduced "
                "precisions are not made by i.ann"
            ).format(bundle)
        )
    if not os.path.isfile(os.path.join(bundle, ONNX_FILE)):
        raise IannError(
            _("Bundle <{}> has no {}; add it first with: i.ann.train export={}").format(
                bundle, ONNX_FILE, bundle
            )
        )
    if "int8" in precisions and len(arrays["train_images"]) < (
        MINIMUM_CALIBRATION_PATCHES
    ):
        raise IannError(
            _(
                "Dataset <{}> has {} training patches: at least {} are needed "
                "to calibrate an int8 model"
            ).format(dataset, len(arrays["train_images"]), MINIMUM_CALIBRATION_PATCHES)
        )
    if not len(arrays["validation_images"]):
        raise IannError(
            _(
                "Dataset <{}> has no validation patches to check reduced "
                "precisions on"
            ).format(dataset)
        )


def add_reduced_precisions(
    bundle, dataset, precisions, calibration_patches, seed, overwrite
):
    """Make and check `precisions` (int8, bfloat16) of the bundle in
    `bundle` on the patches of `dataset`; its metadata as written.

    An existing int8 model is checked again on this kind of CPU, and made
    anew only with `overwrite` (or when it is not the file its record
    names). metadata.json is replaced in one step, after model.int8.onnx:
    an interruption leaves the bundle as it was, or a model.int8.onnx its
    record does not name, which i.ann.classify refuses.
    """
    metadata = read_bundle_metadata(bundle)
    data_meta, arrays = load_dataset(dataset)
    check_inputs(bundle, dataset, metadata, data_meta, arrays, precisions)
    indices = dataset_bands_of(bundle, metadata, data_meta, dataset)
    problem = onnx_problem(bundle, metadata, "onnx")
    if problem:
        raise IannError(
            _(
                "Bundle <{}>: {}; export it again with: i.ann.train export={} "
                "--overwrite"
            ).format(bundle, problem, bundle)
        )
    transform = bundle_transform(metadata)
    cpu = cpu_kind()
    record = dict(metadata.reduced_precision or {})
    checks = list(record.get("checks", []))
    made = None
    if "int8" in precisions and (overwrite or int8_problem(bundle, metadata)):
        tiles = calibration_tiles(arrays, indices, transform, calibration_patches, seed)
        gs.message(
            _("Calibrating an int8 model on {} training patches ...").format(len(tiles))
        )
        made = os.path.join(bundle, INT8_FILE + ".tmp")
        int8 = quantise(os.path.join(bundle, ONNX_FILE), made, tiles)
        int8.update(
            sha256=sha256_of(made),
            onnx_sha256=sha256_of(os.path.join(bundle, ONNX_FILE)),
            calibration={
                "patches": int(len(tiles)),
                "split": "train",
                "seed": int(seed),
                "dataset": os.path.abspath(dataset),
            },
        )
        record["int8"] = int8
        # Checks of another int8 model say nothing of this one.
        checks = [c for c in checks if c["precision"] != "int8"]
    tiles, labels = check_data(arrays, indices, transform)
    threads = os.cpu_count() or 1
    float32_classes = {}
    try:
        for precision in precisions:
            if precision == "bfloat16" and not native_bfloat16(cpu):
                gs.warning(
                    _(
                        "This CPU has no native bfloat16 ({}): bfloat16 is not "
                        "checked here"
                    ).format(cpu["kind"])
                )
                continue
            engines = [
                e for e in PRECISION_ENGINES[precision] if installed(ENGINE_PACKAGES[e])
            ]
            if not engines:
                raise IannError(
                    _("precision {} needs OpenVINO{}: install it with pip").format(
                        precision, _(" or ONNX Runtime") if precision == "int8" else ""
                    )
                )
            for engine in engines:
                check = check_precision(
                    bundle,
                    precision,
                    engine,
                    tiles,
                    labels,
                    data_meta.unlabelled,
                    threads,
                    cpu,
                    int8_path=made,
                    float32_classes=float32_classes,
                )
                checks = [
                    c
                    for c in checks
                    if (c["precision"], c["engine"], c["cpu"])
                    != (precision, engine, cpu["kind"])
                ] + [check]
                report = gs.message if check["passed"] else gs.warning
                report(
                    _("{} on {}, {}: check {}: {}").format(
                        precision,
                        ENGINE_TITLES[engine],
                        cpu["kind"],
                        _("passed") if check["passed"] else _("failed"),
                        check_text(check),
                    )
                )
        if made:
            os.replace(made, os.path.join(bundle, INT8_FILE))
            made = None
    finally:
        if made and os.path.exists(made):
            os.remove(made)
    record["checks"] = checks
    metadata.reduced_precision = record
    write_metadata(bundle, metadata)
    return metadata
