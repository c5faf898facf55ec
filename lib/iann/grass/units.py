"""Map units: metres per unit of a projection, cells' sizes in metres.

Pure Python on a project's WKT and region records (no GRASS session).
"""

import math
import re

# Metres in a degree of latitude (mean Earth radius 6371.0088 km).
METRES_PER_DEGREE = 2 * math.pi * 6371008.8 / 360


def units_of_wkt(wkt):
    """Metres per map unit of a projection (WKT), "degrees", or None."""
    if not wkt:
        return None
    kind = wkt.lstrip().split("[", 1)[0].strip().upper()
    if kind in ("GEOGCS", "GEOGCRS", "GEODCRS", "GEOGRAPHICCRS"):
        return "degrees"
    # The CRS's own (axis) unit is the last length unit of WKT1 and WKT2.
    # (UNIT of WKT1, LENGTHUNIT of WKT2; not ANGLEUNIT or SCALEUNIT).
    unit = r'(?<![A-Z])(?:LENGTHUNIT|UNIT)\[\s*"[^"]*"\s*,\s*([-+0-9.eE]+)'
    factors = re.findall(unit, wkt)
    return float(factors[-1]) if factors else None


def cell_size_metres(nsres, ewres, units, latitude=0.0):
    """Side in metres of a square of a cell's area, for map units `units`.

    `units`: metres per map unit, or "degrees" (latitude-longitude: a
    degree of longitude shrinks with the cosine of `latitude`).
    """
    if units == "degrees":
        ns = nsres * METRES_PER_DEGREE
        ew = ewres * METRES_PER_DEGREE * math.cos(math.radians(latitude))
    else:
        ns, ew = nsres * units, ewres * units
    return math.sqrt(abs(ns * ew))


def training_cell_size(dataset):
    """Cell size in metres of a bundle's training data, or None if unknown.

    `dataset`: the bundle metadata's record of its dataset (region and
    projection).
    """
    dataset = dataset or {}
    region = dataset.get("region") or {}
    if "nsres" not in region or "ewres" not in region:
        return None
    if int(region.get("projection", -1)) == 3:
        units = "degrees"
    elif int(region.get("projection", -1)) == 0:
        units = 1.0  # an unprojected (XY) project: no unit to convert
    else:
        units = units_of_wkt(dataset.get("projection"))
    if units is None:
        return None
    latitude = (float(region["n"]) + float(region["s"])) / 2 if "n" in region else 0
    return cell_size_metres(
        float(region["nsres"]), float(region["ewres"]), units, latitude
    )
