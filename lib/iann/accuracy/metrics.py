"""Accuracy assessment of a classified map against a reference map.

Cell pairs are counted tile by tile (memory bounded by the tile), then the
metrics come from scikit-learn, fed with each distinct (reference, map) pair
weighted by its count: the same numbers as on the full cell arrays.
"""

import json
from collections import Counter

import numpy as np

from iann.grass import CELL_NULL


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


def pair_scores(y_true, y_pred, weights, values):
    """The study's figures of weighted (reference, map) pairs, by scikit-learn.

    Overall accuracy, kappa, macro F1 (over the classes present in either),
    weighted F1, per-class precision, recall, F1 and support in the order
    of `values`, and the confusion matrix (reference in rows). None when
    the weights sum to 0.
    """
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    if weights.sum() == 0:
        return None
    precision, recall, f1, _support = precision_recall_fscore_support(
        y_true, y_pred, labels=values, sample_weight=weights, zero_division=0
    )
    # A class in neither the reference nor the map has no F1 to average: as
    # a 0 it would lower the macro mean for a class that was never there.
    present = sorted(
        set(y_true[weights > 0].tolist()) | set(y_pred[weights > 0].tolist())
    )

    def averaged(labels, average):
        return precision_recall_fscore_support(
            y_true,
            y_pred,
            labels=labels,
            sample_weight=weights,
            average=average,
            zero_division=0,
        )[2]

    return {
        "overall_accuracy": float(
            accuracy_score(y_true, y_pred, sample_weight=weights)
        ),
        "kappa": float(
            cohen_kappa_score(y_true, y_pred, labels=values, sample_weight=weights)
        ),
        "macro_f1": float(averaged(present, "macro")),
        "weighted_f1": float(averaged(values, "weighted")),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": [float(weights[y_true == v].sum()) for v in values],
        "matrix": confusion_matrix(
            y_true, y_pred, labels=values, sample_weight=weights
        ),
    }


def matrix_scores(matrix):
    """pair_scores of a confusion matrix of class indices (reference in
    rows, predictions in columns): the accuracy report's figures."""
    matrix = np.asarray(matrix)
    y_true, y_pred = np.nonzero(matrix)
    return pair_scores(
        y_true,
        y_pred,
        matrix[y_true, y_pred].astype(np.float64),
        list(range(len(matrix))),
    )


def accuracy_report(counter, classes, mapped_cells=None, cell_area=1.0):
    """Overall accuracy, kappa, per-class precision/recall/F1/support, matrix.

    `classes` are the model's classes (value, label); reference values the
    model never saw are added to the table and listed as unseen. With
    `mapped_cells` ({value: cells of the whole map}), the area-adjusted
    estimates are added.
    """
    y_true, y_pred, weights = counter.arrays()
    known = {c["value"]: c["label"] for c in classes}
    unseen = sorted(set(np.unique(y_true).tolist()) - set(known))
    values = sorted(set(known) | set(unseen) | set(np.unique(y_pred).tolist()))
    scores = pair_scores(y_true, y_pred, weights, values)
    if scores is None:
        return None
    labels = {v: known.get(v, str(v)) for v in values}
    matrix = scores["matrix"]
    reference_totals = matrix.sum(axis=1)
    adjusted = None
    if mapped_cells:
        adjusted = area_adjusted(matrix, values, mapped_cells, cell_area)
    return {
        "area_adjusted": adjusted,
        "cells": int(weights.sum()),
        "overall_accuracy": scores["overall_accuracy"],
        "kappa": scores["kappa"],
        "majority_share": float(reference_totals.max() / reference_totals.sum()),
        "macro_f1": scores["macro_f1"],
        "weighted_f1": scores["weighted_f1"],
        "classes": [
            {
                "value": int(v),
                "label": labels[v],
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for v, p, r, f, s in zip(
                values,
                scores["precision"],
                scores["recall"],
                scores["f1"],
                scores["support"],
            )
        ],
        "unseen_reference_classes": [int(v) for v in unseen],
        "confusion_matrix": {
            "rows": "reference",
            "columns": "map",
            "values": [int(v) for v in values],
            "matrix": matrix.astype(np.int64).tolist(),
        },
    }


def area_adjusted(matrix, values, mapped_cells, cell_area):
    """Area-adjusted accuracy and class areas (Olofsson et al. 2014).

    The reference cells are taken as a sample stratified by map class, the
    strata weighted by the mapped share of each class. `matrix` has the
    reference in rows and the map in columns; `mapped_cells` maps class
    value to its cell count in the whole map. Returns estimates with 95%
    confidence intervals (1.96 standard errors).
    """
    n = np.asarray(matrix, dtype=np.float64).T  # rows: map class i, cols: ref j
    mapped = np.array([mapped_cells.get(v, 0) for v in values], dtype=np.float64)
    total = mapped.sum()
    weights = mapped / total
    n_i = n.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_i[:, None] > 0, n / n_i[:, None], 0.0)
        p = weights[:, None] * share
        ref_share = p.sum(axis=0)  # estimated reference proportion of class j
        dof = np.where(n_i > 1, n_i - 1, np.nan)
        users = np.where(n_i > 0, np.diag(share), np.nan)
        producers = np.where(ref_share > 0, np.diag(p) / ref_share, np.nan)
        overall = float(np.trace(p))
        var_overall = np.nansum(weights**2 * users * (1 - users) / dof)
        var_users = users * (1 - users) / dof
        var_ref_share = np.nansum(
            (weights[:, None] ** 2) * share * (1 - share) / dof[:, None], axis=0
        )
        est_ref_cells = (mapped[:, None] * share).sum(axis=0)
        var_producers = []
        for j in range(len(values)):
            others = sum(
                mapped[i] ** 2 * share[i, j] * (1 - share[i, j]) / dof[i]
                for i in range(len(values))
                if i != j and n_i[i] > 1
            )
            own = (
                mapped[j] ** 2
                * (1 - producers[j]) ** 2
                * users[j]
                * (1 - users[j])
                / dof[j]
            )
            var_producers.append(
                (own + producers[j] ** 2 * others) / est_ref_cells[j] ** 2
            )
    half = 1.96
    classes = []
    for j, value in enumerate(values):
        area = ref_share[j] * total * cell_area
        classes.append(
            {
                "value": int(value),
                "mapped_area": float(mapped[j] * cell_area),
                "area": float(area),
                "area_ci95": float(
                    half * np.sqrt(var_ref_share[j]) * total * cell_area
                ),
                "users_accuracy": _number(users[j]),
                "users_accuracy_ci95": _number(half * np.sqrt(var_users[j])),
                "producers_accuracy": _number(producers[j]),
                "producers_accuracy_ci95": _number(half * np.sqrt(var_producers[j])),
            }
        )
    return {
        "method": "Olofsson et al. (2014), strata: map classes",
        "overall_accuracy": overall,
        "overall_accuracy_ci95": float(half * np.sqrt(var_overall)),
        "map_area": float(total * cell_area),
        "classes": classes,
    }


def _number(x):
    """A float for JSON, None for NaN."""
    x = float(x)
    return None if np.isnan(x) else x


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
    if report.get("decision_rule"):
        lines[-1:-1] = ["Class map:        {}".format(report["decision_rule"])]
    width = max([5] + [len(c["label"]) for c in report["classes"]])
    lines += _table(
        "{:>6}  {:<{w}}  {:>9}  {:>6}  {:>6}  {:>9}",
        "{:>6}  {:<{w}}  {:>9.4f}  {:>6.4f}  {:>6.4f}  {:>9}",
        ["value", "class", "precision", "recall", "f1", "support"],
        [
            [
                c[key]
                for key in ("value", "label", "precision", "recall", "f1", "support")
            ]
            for c in report["classes"]
        ],
        w=width,
    )
    if report["unseen_reference_classes"]:
        lines.append("")
        lines.append(
            "Reference classes the model never saw: {}".format(
                ", ".join(str(v) for v in report["unseen_reference_classes"])
            )
        )
    adjusted = report.get("area_adjusted")
    if adjusted:
        lines.append("")
        lines.append(
            "Area-adjusted (Olofsson et al. 2014): overall accuracy "
            "{:.4f} +/- {:.4f} (95% CI)".format(
                adjusted["overall_accuracy"], adjusted["overall_accuracy_ci95"]
            )
        )
        unit = adjusted.get("area_unit", "map units^2")
        lines += _table(
            "{:>6}  {:>14}  {:>22}  {:>15}  {:>15}",
            "{:>6}  {:>14.0f}  {:>22}  {:>15}  {:>15}",
            [
                "value",
                "mapped " + unit,
                "estimated {} +/- CI".format(unit),
                "user's +/- CI",
                "producer's +/- CI",
            ],
            [
                [
                    c["value"],
                    c["mapped_area"],
                    "{:.0f} +/- {:.0f}".format(c["area"], c["area_ci95"]),
                    _pm(c["users_accuracy"], c["users_accuracy_ci95"]),
                    _pm(c["producers_accuracy"], c["producers_accuracy_ci95"]),
                ]
                for c in adjusted["classes"]
            ],
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


def _table(header_format, row_format, titles, rows, **widths):
    """A text table's lines: the titles, a rule as long, then the rows."""
    header = header_format.format(*titles, **widths)
    return [header, "-" * len(header)] + [
        row_format.format(*row, **widths) for row in rows
    ]


def _pm(value, ci):
    if value is None:
        return "-"
    return "{:.3f} +/- {:.3f}".format(value, ci or 0.0)


def plot_confusion(path, report):
    """The confusion matrix normalised by reference class, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(report["confusion_matrix"]["matrix"], dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    labels = [c["label"] for c in report["classes"]]
    size = 1.2 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("map")
    ax.set_ylabel("reference")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                "{:.2f}".format(normalised[i, j]),
                ha="center",
                va="center",
                color="white" if normalised[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_title(
        "OA {:.3f}, kappa {:.3f}".format(report["overall_accuracy"], report["kappa"])
    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of reference")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
