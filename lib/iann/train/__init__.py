"""Training: a network trained on a patch dataset into a model bundle.

The settings and their options, the batches (augmented, standardised),
callbacks (GRASS progress, early stopping, per-epoch accuracy),
checkpoints and resuming, devices and data parallelism, transfer from a
pretrained bundle, the training curves, the bundle written, and its
decision rule and reduced precisions learnt or checked on the dataset. Imports
iann.malloc, iann.formats, iann.nn, iann.accuracy.metrics and
iann.predict.
"""
