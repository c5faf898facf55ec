"""i.ann: deep learning for land-cover mapping inside GRASS GIS.

The shared library of the i.ann.patches, i.ann.train, i.ann.classify and
i.ann.sample modules, in packages by stage; imports only go down this list:

- errors.py, malloc.py: the library's error, glibc's heap reuse;
- formats/: the dataset and the model bundle on disk;
- grass/: everything that talks to GRASS;
- nn/: the networks and what they are made of;
- accuracy/: metrics and the assessment of a map;
- predict/: engines, ONNX export, the tile pipeline;
- patches/: cutting a patch dataset;
- train/: the training run;
- jobs/: a classification job, in one process or on Dask;
- labelling/: the points to label next (i.ann.sample).

Modules that need Keras import it at their top; the module scripts import
the library only after parsing, so that --help and --interface-description
load no deep-learning backend. Importing the library sets one thing:
TF_CPP_MIN_LOG_LEVEL=2 (unless set), so that TensorFlow's C++ start-up
chatter stays out of GRASS's messages in every process that runs it
(modules, Dask workers); its errors still show.
"""

import os as _os

__version__ = "0.1.0"

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
