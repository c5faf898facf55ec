#!/usr/bin/env python3
"""The classical baseline of the demo: a pixel random forest, as a map.

Run inside the demo's GRASS session by demo/chain.sh after the split maps
exist. A 200-tree scikit-learn random forest (the approach of r.learn.ml2)
learns the reference classes from single pixels of the training blocks and
classifies every cell with data into the CELL map landcover_rf, with the
reference's categories and colours, so that i.ann.classify -e assesses it
on the held-out blocks exactly as it assesses the network's map.
Usage: random_forest.py BANDS(comma-separated) REFERENCE TRAINING_MASK OUTPUT
"""

import sys

import numpy as np

import grass.script as gs
from grass.script import array as garray


def main(bands, reference, training, output):
    from sklearn.ensemble import RandomForestClassifier

    stack = np.stack([np.asarray(garray.array(b, null=np.nan)) for b in bands], -1)
    classes = np.asarray(garray.array(reference, null=-1, dtype=np.int32))
    in_training = np.asarray(garray.array(training, null=0, dtype=np.int32)) > 0
    has_data = ~np.isnan(stack).any(-1)
    learn = has_data & in_training & (classes >= 0)
    gs.message(
        "Random forest, 200 trees, on {:,} pixels of <{}>".format(
            int(learn.sum()), training
        )
    )
    forest = RandomForestClassifier(n_estimators=200, n_jobs=-1, random_state=1)
    forest.fit(stack[learn], classes[learn])
    mapped = garray.array(dtype=np.int32)
    mapped[...] = -1
    mapped[has_data] = forest.predict(stack[has_data])
    mapped.write(output, null=-1, overwrite=True)
    gs.run_command("r.category", map=output, raster=reference)
    gs.run_command("r.colors", map=output, raster=reference, quiet=True)
    gs.run_command(
        "r.support",
        map=output,
        title="Random forest, 200 trees, on pixels (scikit-learn)",
        history="bands: {}; trained on <{}> within <{}>".format(
            ",".join(bands), reference, training
        ),
    )


if __name__ == "__main__":
    main(sys.argv[1].split(","), *sys.argv[2:5])
