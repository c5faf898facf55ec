"""Prediction: the engines that run a bundle's network (Keras, ONNX
Runtime, OpenVINO), the ONNX export and its check, the reduced precisions
(int8, bfloat16) and theirs, the decision rule, the tile pipeline
that classifies one block from arrays, and where a region is cut into
blocks and tiles.

Runs without GRASS (bench/bench_gpu.py drives it on machines that have
none). Imports iann.formats, iann.nn, and of iann.grass only what needs
no GRASS: the constant CELL_NULL and the map units (grass/units.py).
"""
