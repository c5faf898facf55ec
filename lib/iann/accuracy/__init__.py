"""Accuracy: the study's figures (overall accuracy, kappa, per-class
precision, recall and F1, confusion matrix, area estimates) and the
assessment of a classified map against reference maps or vectors.

metrics.py is pure NumPy (training's per-epoch figures use it);
assessment.py reads maps through iann.grass.
"""
