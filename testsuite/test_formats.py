"""The dataset's and the bundle's metadata: one reader and writer each.

testsuite/data/bundle_v1 is a bundle written by the release before the
formats became dataclasses (format_version 1; an fcn of 4 filters, 3
bands, 4 classes, untrained, model.onnx with its probe): it must still
load, give the probabilities recorded when it was written, and be written
back unchanged. Oracles: the JSON file itself (json.load) and the probe's
probabilities that release computed.
"""

import builtins
import json
import shutil

import numpy as np
import pytest

from conftest import REPO

from iann.errors import IannError
from iann.formats.bundle import (
    BundleMetadata,
    read_bundle_metadata,
    write_metadata,
)
from iann.formats.dataset import DatasetMetadata, load_dataset

BUNDLE_V1 = REPO / "testsuite" / "data" / "bundle_v1"

builtins.__dict__.setdefault("_", lambda text: text)


def test_bundle_of_the_last_release_reads_and_writes_back_unchanged(tmp_path):
    on_disk = json.loads((BUNDLE_V1 / "metadata.json").read_text())
    metadata = read_bundle_metadata(str(BUNDLE_V1))
    assert isinstance(metadata, BundleMetadata)
    assert metadata.bands == on_disk["bands"]
    assert metadata.classes == on_disk["classes"]
    assert metadata.margin == on_disk["margin"]
    assert metadata.onnx == on_disk["onnx"]
    copy = tmp_path / "bundle"
    copy.mkdir()
    write_metadata(str(copy), metadata)
    written = (copy / "metadata.json").read_text()
    assert json.loads(written) == on_disk
    assert list(json.loads(written)) == list(on_disk)  # the keys' order too


def test_bundle_of_the_last_release_predicts_its_recorded_probe():
    from iann.nn.saving import load_model
    from iann.predict.engines import onnx_problem
    from iann.predict.onnx_export import probe_input

    metadata = read_bundle_metadata(str(BUNDLE_V1))
    record = metadata.onnx
    probe = probe_input(record["probe_shape"], metadata.size_multiple)
    expected = np.asarray(record["probe_output"], np.float32)  # channels last
    model = load_model(str(BUNDLE_V1), metadata)
    got = np.asarray(model.predict_on_batch(probe.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert onnx_problem(str(BUNDLE_V1), metadata, "onnx") is None


@pytest.mark.parametrize("version", [2, 0, "1"])
def test_bundle_of_another_format_version_is_refused(tmp_path, version):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE_V1, bundle)
    data = json.loads((bundle / "metadata.json").read_text())
    data["format_version"] = version
    (bundle / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(IannError) as error:
        read_bundle_metadata(str(bundle))
    message = str(error.value)
    assert str(bundle / "metadata.json") in message
    assert "format_version {}".format(version) in message


def test_a_dataset_metadata_is_read_and_written_key_for_key(tmp_path):
    data = {
        "format": "i.ann.patches",
        "format_version": 1,
        "created": "2026-12-03T06:00:00",
        "bands": [{"name": "b1@PERMANENT", "resampled": False}],
        "reference": "landclass96@PERMANENT",
        "reference_vector": None,
        "classes": [{"index": 0, "value": 1, "label": "a", "color": None}],
        "unlabelled": 255,
        "patch_size": 8,
        "image_dtype": "uint16",
        "statistics": {"mean": [1.0], "std": [2.0]},
        "statistics_area": "labelled reference cells with data in the band",
        "sampling": {"method": "random", "number_requested": 1},
        "counts": {"train": {"patches": 1}},
        "region": {"rows": 8, "cols": 8},
        "mask": False,
        "projection": "",
        "software": {"i.ann": "0.1.0"},
        "files": {"train_images": "train_images.npy"},
    }
    metadata = DatasetMetadata.from_json(data)
    assert metadata.patch_size == 8 and metadata.image_dtype == "uint16"
    assert metadata.to_json() == data
    assert list(metadata.to_json()) == list(data)
    # A key this version does not know is kept, and written back.
    noted = DatasetMetadata.from_json(dict(data, note="by hand"))
    assert noted.to_json() == dict(data, note="by hand")
    folder = tmp_path / "patches"
    folder.mkdir()
    np.save(folder / "train_images.npy", np.zeros((1, 8, 8, 1), np.uint16))
    (folder / "metadata.json").write_text(json.dumps(data))
    read, arrays = load_dataset(str(folder))
    assert read == metadata
    assert arrays["train_images"].shape == (1, 8, 8, 1)
    data["format_version"] = 2
    (folder / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(IannError) as error:
        load_dataset(str(folder))
    assert str(folder / "metadata.json") in str(error.value)
    assert "format_version 2" in str(error.value)
