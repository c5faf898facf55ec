"""i.ann: deep learning for land-cover mapping inside GRASS GIS.

The shared library of the i.ann.patches, i.ann.train and i.ann.classify
modules. Nothing here imports Keras at module level, so that the modules
answer --help and --interface-description without loading a deep-learning
backend.
"""

import os as _os

__version__ = "0.1.0"

DATASET_FORMAT = "i.ann.patches"
BUNDLE_FORMAT = "i.ann.model"
FORMAT_VERSION = 1

# TensorFlow's C++ start-up chatter is not for GRASS users; errors still show.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
