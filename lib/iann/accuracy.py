"""Accuracy assessment of a classified map against a reference map.

Cell pairs are counted tile by tile (memory bounded by the tile), then the
metrics come from scikit-learn, fed with each distinct (reference, map) pair
weighted by its count: the same numbers as on the full cell arrays.
"""

import json
from collections import Counter

import numpy as np

from .grassio import CELL_NULL


class PairCounter:
    """Counts (reference value, map value) pairs over labelled, mapped cells."""

    def __init__(self):
        self.counts = Counter()

    def add(self, reference, mapped):
        keep = (reference != CELL_NULL) & (mapped != CELL_NULL)
        if not keep.any():
            return
        pairs = np.stack([reference[keep], mapped[keep]], axis=1)
        unique, counts = np.unique(pairs, axis=0, return_counts=True)
        for (ref, pred), count in zip(unique.tolist(), counts.tolist()):
            self.counts[(ref, pred)] += count

    def arrays(self):
        """y_true, y_pred and sample weights, one entry per distinct pair."""
        if not self.counts:
            return np.array([], int), np.array([], int), np.array([], float)
        pairs = np.array(list(self.counts.keys()), dtype=np.int64)
        weights = np.array(list(self.counts.values()), dtype=np.float64)
        return pairs[:, 0], pairs[:, 1], weights


def accuracy_report(counter, classes):
    """Overall accuracy, kappa, per-class precision/recall/F1/support, matrix.

    `classes` are the model's classes (value, label); reference values the
    model never saw are added to the table and listed as unseen.
    """
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true, y_pred, weights = counter.arrays()
    if weights.sum() == 0:
        return None
    known = {c["value"]: c["label"] for c in classes}
    unseen = sorted(set(np.unique(y_true).tolist()) - set(known))
    values = sorted(set(known) | set(unseen) | set(np.unique(y_pred).tolist()))
    labels = {v: known.get(v, str(v)) for v in values}
    precision, recall, f1, _support = precision_recall_fscore_support(
        y_true, y_pred, labels=values, sample_weight=weights, zero_division=0
    )
    support = [float(weights[y_true == v].sum()) for v in values]
    macro = precision_recall_fscore_support(
        y_true,
        y_pred,
        labels=values,
        sample_weight=weights,
        average="macro",
        zero_division=0,
    )
    weighted = precision_recall_fscore_support(
        y_true,
        y_pred,
        labels=values,
        sample_weight=weights,
        average="weighted",
        zero_division=0,
    )
    matrix = confusion_matrix(y_true, y_pred, labels=values, sample_weight=weights)
    reference_totals = matrix.sum(axis=1)
    return {
        "cells": int(weights.sum()),
        "overall_accuracy": float(
            accuracy_score(y_true, y_pred, sample_weight=weights)
        ),
        "kappa": float(
            cohen_kappa_score(y_true, y_pred, labels=values, sample_weight=weights)
        ),
        "majority_share": float(reference_totals.max() / reference_totals.sum()),
        "macro_f1": float(macro[2]),
        "weighted_f1": float(weighted[2]),
        "classes": [
            {
                "value": int(v),
                "label": labels[v],
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for v, p, r, f, s in zip(values, precision, recall, f1, support)
        ],
        "unseen_reference_classes": [int(v) for v in unseen],
        "confusion_matrix": {
            "rows": "reference",
            "columns": "map",
            "values": [int(v) for v in values],
            "matrix": matrix.astype(np.int64).tolist(),
        },
    }


def format_report(report):
    """The report as a readable text table."""
    lines = [
        "Cells compared:   {}".format(report["cells"]),
        "Overall accuracy: {:.4f}".format(report["overall_accuracy"]),
        "Cohen's kappa:    {:.4f}".format(report["kappa"]),
        "Macro F1:         {:.4f}".format(report["macro_f1"]),
        "Weighted F1:      {:.4f}".format(report["weighted_f1"]),
        "Majority class share of the reference: {:.4f}".format(
            report["majority_share"]
        ),
        "",
    ]
    width = max([5] + [len(c["label"]) for c in report["classes"]])
    header = "{:>6}  {:<{w}}  {:>9}  {:>6}  {:>6}  {:>9}".format(
        "value", "class", "precision", "recall", "f1", "support", w=width
    )
    lines.append(header)
    lines.append("-" * len(header))
    for c in report["classes"]:
        lines.append(
            "{:>6}  {:<{w}}  {:>9.4f}  {:>6.4f}  {:>6.4f}  {:>9}".format(
                c["value"],
                c["label"],
                c["precision"],
                c["recall"],
                c["f1"],
                c["support"],
                w=width,
            )
        )
    if report["unseen_reference_classes"]:
        lines.append("")
        lines.append(
            "Reference classes the model never saw: {}".format(
                ", ".join(str(v) for v in report["unseen_reference_classes"])
            )
        )
    matrix = report["confusion_matrix"]
    lines.append("")
    lines.append("Confusion matrix (rows: reference, columns: map)")
    cell = max(7, max(len(str(x)) for row in matrix["matrix"] for x in row) + 1)
    lines.append(
        " " * 7 + "".join("{:>{c}}".format(v, c=cell) for v in matrix["values"])
    )
    for v, row in zip(matrix["values"], matrix["matrix"]):
        lines.append(
            "{:>7}".format(v) + "".join("{:>{c}}".format(x, c=cell) for x in row)
        )
    return "\n".join(lines)


def write_report(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
