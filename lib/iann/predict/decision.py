"""The decision rule: from a cell's class probabilities to its class.

Plain argmax takes the most probable class. A network trained on few cells
of a class gives that class low probabilities even where it is right, and
argmax then never maps it. The rule learnt here adds a bias per class to
the log-probabilities before the argmax (a prior correction), chosen on
the validation patches, where the network never trained:

- `macro_f1`: coordinate ascent on the biases, class by class, for the
  highest mean F1 of the classes;
- `class_f1`: the bias of one class alone, for its highest F1;
- `class_recall`: the smallest bias of one class that gives it a recall
  of at least the target.

Classes without a labelled validation cell keep a bias of 0: no evidence,
no change. The probabilities themselves are not changed, so the
probability and uncertainty maps stay those of the network; the rule
makes the class map only. Applied as argmax(p * exp(bias)), which is
argmax(log p + bias) without a logarithm.
"""

import numpy as np

from iann.accuracy.metrics import matrix_scores
from iann.errors import IannError

RULES = ("argmax", "macro_f1", "class_f1", "class_recall")
# The biases tried: steps of 0.25 in the log-probability, a factor of up
# to e^8 (about 3000) either way: a rare class's probabilities can be that
# far below the others' where it is right.
BIAS_GRID = np.arange(-8.0, 8.0 + 1e-9, 0.25)
# A bias moves from 0 only for a gain of validation macro F1 larger than
# this: noise of a few cells must not shift a class.
MINIMUM_GAIN = 0.002
PASSES = 3
# Validation cells the rule is learnt on, at most (every k-th labelled cell).
MAXIMUM_CELLS = 1_000_000


def class_scale(bias):
    """The factors the probabilities are multiplied by before the argmax."""
    return tuple(float(s) for s in np.exp(np.asarray(bias, dtype=np.float64)))


def decide(probabilities, scale, axis=0):
    """Class indices of probabilities (classes along `axis`) under the rule."""
    if scale is None:
        return np.argmax(probabilities, axis=axis)
    shape = [1] * probabilities.ndim
    shape[axis] = len(scale)
    weighted = probabilities * np.asarray(scale, np.float32).reshape(shape)
    return np.argmax(weighted, axis=axis)


def confusion(labels, predicted, n_classes):
    return np.bincount(
        labels * n_classes + predicted, minlength=n_classes * n_classes
    ).reshape(n_classes, n_classes)


def figures(log_p, labels, bias):
    """OA, macro F1 and per-class recall and F1 of the validation cells,
    from the accuracy report's scorer."""
    matrix = confusion(labels, np.argmax(log_p + bias, axis=1), log_p.shape[1])
    scores = matrix_scores(matrix)
    return {
        "overall_accuracy": scores["overall_accuracy"],
        "macro_f1": scores["macro_f1"],
        "recall": [float(r) for r in scores["recall"]],
        "f1": [float(f) for f in scores["f1"]],
    }


def learn_rule(probabilities, labels, rule, target=None, recall=None):
    """The rule's biases from validation cells; a dict for the bundle.

    `probabilities` is (cells, classes), `labels` the cells' class indices;
    `target` the class index of class_f1 and class_recall, `recall` the
    recall class_recall aims at. The dict has the rule, the bias of each
    class, and the validation figures under argmax and under the rule.
    """
    if rule not in RULES or rule == "argmax":
        raise IannError(_("Unknown decision rule <{}>").format(rule))
    n_classes = probabilities.shape[1]
    log_p = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0))
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes)
    bias = np.zeros(n_classes)
    reached = None
    if rule == "macro_f1":
        bias = ascend_macro_f1(log_p, labels, counts)
    elif counts[target] == 0:
        reached = False
    elif rule == "class_f1":
        bias[target] = best_class_f1(log_p, labels, target)
    else:
        bias[target], reached = smallest_for_recall(log_p, labels, target, recall)
    record = {
        "rule": rule,
        "bias": [float(b) for b in bias],
        "validation_cells": int(len(labels)),
        "validation_cells_per_class": [int(c) for c in counts],
        "argmax": figures(log_p, labels, np.zeros(n_classes)),
        "tuned": figures(log_p, labels, bias),
    }
    if target is not None:
        record["target_class"] = int(target)
    if recall is not None:
        record["target_recall"] = float(recall)
    if reached is not None:
        record["target_reached"] = reached
    return record


def ascend_macro_f1(log_p, labels, counts):
    """Biases by coordinate ascent on the macro F1, the absent classes at 0."""
    n_classes = log_p.shape[1]
    bias = np.zeros(n_classes)

    def score(candidate):
        return figures(log_p, labels, candidate)["macro_f1"]

    best = score(bias)
    for _pass in range(PASSES):
        changed = False
        for c in np.flatnonzero(counts):
            results = []
            for value in BIAS_GRID:
                trial = bias.copy()
                trial[c] = value
                results.append((score(trial), -abs(value), value))
            # The highest score; of equal scores, the bias nearest to 0.
            result, _nearness, value = max(results)
            if value != bias[c] and result > best + MINIMUM_GAIN:
                best, bias[c], changed = result, value, True
        if not changed:
            break
    return bias


def best_class_f1(log_p, labels, target):
    """The bias of `target` alone with the highest F1 of that class."""
    n_classes = log_p.shape[1]
    best_value, best_f1 = 0.0, None
    for value in sorted(BIAS_GRID, key=abs):
        bias = np.zeros(n_classes)
        bias[target] = value
        f1 = figures(log_p, labels, bias)["f1"][target]
        if best_f1 is None or f1 > best_f1 + 1e-12:
            best_value, best_f1 = value, f1
    return best_value


def smallest_for_recall(log_p, labels, target, recall):
    """The smallest bias of `target` (from 0 up) reaching the recall; the
    largest tried and False when none does."""
    n_classes = log_p.shape[1]
    of_class = labels == target
    for value in BIAS_GRID[BIAS_GRID >= 0]:
        bias = np.zeros(n_classes)
        bias[target] = value
        predicted = np.argmax(log_p[of_class] + bias, axis=1)
        if np.mean(predicted == target) >= recall:
            return float(value), True
    return float(BIAS_GRID[-1]), False


def rule_description(decision):
    """Words for the map's history and the report: which rule made the map."""
    if not decision:
        return _("argmax of the probabilities")
    biases = ", ".join("{:+.2f}".format(b) for b in decision["bias"])
    return _("argmax after the bundle's class biases ({}: {})").format(
        decision["rule"], biases
    )
