"""Checks of a classification request against its bundle, before any work.

The bands must match the model's number and, by name, its order; the
region's cells should be about the size of the training cells (a warning
beyond RESOLUTION_FACTOR); with normalize=image the statistics of the
bands are taken over the whole region, once, for every block.
"""

import numpy as np

import grass.script as gs

from iann.errors import IannError
from iann.grass.rasters import check_new_raster, require_rasters
from iann.grass.module_output import key_values, metres_per_unit
from iann.grass.units import cell_size_metres, training_cell_size
from iann.jobs.outputs import OutputMaps

# A region whose cells differ from the training data's by more than this
# factor (either way) gets a warning; the i.ann.classify manual says so.
RESOLUTION_FACTOR = 1.5


def image_statistics(bands):
    """Mean and standard deviation of each band over the region (r.univar)."""
    means, stds = [], []
    for name in bands:
        stats = key_values("r.univar", shell_flag="g", map=name)
        if int(stats.get("n", 0)) == 0:
            raise IannError(_("Raster map <{}> has no data in the region").format(name))
        means.append(float(stats["mean"]))
        stds.append(float(stats["stddev"]) or 1.0)
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def check_request(request, metadata):
    """Clear errors for bad input, before anything is computed or written."""
    bands = require_rasters(request.bands)
    if len(bands) != len(metadata.bands):
        raise IannError(
            _("Model <{}> was trained on {} bands ({}), {} were given").format(
                request.bundle,
                len(metadata.bands),
                ",".join(b["name"] for b in metadata.bands),
                len(bands),
            )
        )
    check_band_order(bands, metadata)
    if request.segments:
        require_rasters([request.segments])
    values = [c["value"] for c in metadata.classes]
    outputs = OutputMaps.requested(
        request.output, request.probabilities, request.uncertainty, values
    )
    for name in outputs.names():
        check_new_raster(name, request.overwrite)
    return bands, outputs


def check_band_order(bands, metadata):
    """Warn when the bands are the model's, by name, in another order.

    The network takes the bands by position: the model's first band is
    whatever map comes first.
    """
    given = [name.split("@", 1)[0] for name in bands]
    trained = [b["name"].split("@", 1)[0] for b in metadata.bands]
    if given != trained and sorted(given) == sorted(trained):
        gs.warning(
            _(
                "The bands <{}> are those the model was trained on in another "
                "order (<{}>): the network takes them by position; give them in "
                "the model's order unless they are other images of the same names"
            ).format(",".join(given), ",".join(trained))
        )


def region_cell_size(region):
    """Cell size in metres of the region (see grass/units.py)."""
    if gs.locn_is_latlong():
        units = "degrees"
    else:
        units = metres_per_unit()
    return cell_size_metres(
        region["nsres"], region["ewres"], units, (region["n"] + region["s"]) / 2
    )


def check_resolution(metadata, region, bundle):
    """Warn when the region's cells are much larger or smaller than in training.

    The network learnt objects at the scale of its training cells: a
    region of 2 m cells for a model trained at 28.5 m is classified
    without error, and badly. Cell sizes are compared in metres, so that
    a latitude-longitude project is measured as such.
    """
    trained = training_cell_size(metadata.dataset)
    if not trained:
        return
    here = region_cell_size(region)
    factor = max(here / trained, trained / here)
    if factor > RESOLUTION_FACTOR:
        gs.warning(
            _(
                "The region's cells ({:.3g} m) are {:.1f} times {} than those model "
                "<{}> was trained on ({:.3g} m): the network sees objects at "
                "another scale than it learnt; set the region's resolution near "
                "the training one (g.region res=) or train at this one"
            ).format(
                here,
                factor,
                _("smaller") if here < trained else _("larger"),
                bundle,
                trained,
            )
        )
