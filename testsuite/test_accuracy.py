"""The accuracy report against numbers computed by hand."""

import numpy as np
import pytest

from iann.accuracy.metrics import PairCounter, accuracy_report, format_report
from iann.grass import CELL_NULL

CLASSES = [{"value": 1, "label": "a"}, {"value": 2, "label": "b"}]


def test_report_on_a_small_map():
    # Confusion matrix (rows reference, columns map): [[3, 1], [2, 4]].
    reference = np.array([[1, 1, 1, 1, 2], [2, 2, 2, 2, 2]], dtype=np.int32)
    mapped = np.array([[1, 1, 1, 2, 1], [1, 2, 2, 2, 2]], dtype=np.int32)
    counter = PairCounter()
    counter.add(reference[:1], mapped[:1])
    counter.add(reference[1:], mapped[1:])
    report = accuracy_report(counter, CLASSES)
    assert report["cells"] == 10
    assert report["overall_accuracy"] == pytest.approx(0.7)
    # p_o = 0.7; p_e = (4*5 + 6*5) / 100 = 0.5; kappa = 0.2 / 0.5 = 0.4.
    assert report["kappa"] == pytest.approx(0.4)
    a, b = report["classes"]
    assert a["precision"] == pytest.approx(3 / 5) and a["recall"] == pytest.approx(
        3 / 4
    )
    assert b["precision"] == pytest.approx(4 / 5) and b["recall"] == pytest.approx(
        4 / 6
    )
    assert a["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert (a["support"], b["support"]) == (4, 6)
    assert report["majority_share"] == pytest.approx(0.6)
    assert report["confusion_matrix"]["matrix"] == [[3, 1], [2, 4]]
    assert "Cohen's kappa:    0.4000" in format_report(report)


def test_macro_f1_leaves_out_classes_never_seen():
    # The model knows class 3, but neither map nor reference has it: the
    # macro F1 is the mean over classes 1 and 2, as in the first test.
    reference = np.array([[1, 1, 1, 1, 2], [2, 2, 2, 2, 2]], dtype=np.int32)
    mapped = np.array([[1, 1, 1, 2, 1], [1, 2, 2, 2, 2]], dtype=np.int32)
    counter = PairCounter()
    counter.add(reference, mapped)
    classes = CLASSES + [{"value": 3, "label": "c"}]
    report = accuracy_report(counter, classes)
    f1_a = 2 * 0.6 * 0.75 / 1.35
    f1_b = 2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)
    assert report["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert [c["value"] for c in report["classes"]] == [1, 2, 3]
    assert report["classes"][2]["support"] == 0


def test_null_cells_are_left_out():
    reference = np.array([1, CELL_NULL, 2, 2], dtype=np.int32)
    mapped = np.array([1, 1, CELL_NULL, 2], dtype=np.int32)
    counter = PairCounter()
    counter.add(reference, mapped)
    report = accuracy_report(counter, CLASSES)
    assert report["cells"] == 2
    assert report["overall_accuracy"] == 1.0


def test_no_cells_gives_no_report():
    counter = PairCounter()
    counter.add(np.array([CELL_NULL]), np.array([1]))
    assert accuracy_report(counter, CLASSES) is None


def test_area_adjusted_estimates_by_hand():
    # The same sample (rows reference, columns map: [[3, 1], [2, 4]]) from a
    # map of 800 cells of class 1 and 200 of class 2. Stratum weights
    # W = (0.8, 0.2); n_i. = (5, 5); p_ij = W_i n_ij / n_i. (i map, j ref):
    # [[0.48, 0.32], [0.04, 0.16]].
    reference = np.array([1, 1, 1, 1, 2, 2, 2, 2, 2, 2], dtype=np.int32)
    mapped = np.array([1, 1, 1, 2, 1, 1, 2, 2, 2, 2], dtype=np.int32)
    counter = PairCounter()
    counter.add(reference, mapped)
    report = accuracy_report(counter, CLASSES, mapped_cells={1: 800, 2: 200})
    adjusted = report["area_adjusted"]
    assert adjusted["overall_accuracy"] == pytest.approx(0.64)
    # V(O) = sum W_i^2 U_i (1 - U_i) / (n_i. - 1) = 0.0384 + 0.0016 = 0.04.
    assert adjusted["overall_accuracy_ci95"] == pytest.approx(1.96 * 0.2)
    one, two = adjusted["classes"]
    assert one["area"] == pytest.approx(520) and two["area"] == pytest.approx(480)
    # V(p.1) = 0.64 * 0.6 * 0.4 / 4 + 0.04 * 0.2 * 0.8 / 4 = 0.04.
    assert one["area_ci95"] == pytest.approx(1.96 * 0.2 * 1000)
    assert one["users_accuracy"] == pytest.approx(0.6)
    assert one["users_accuracy_ci95"] == pytest.approx(1.96 * np.sqrt(0.24 / 4))
    assert one["producers_accuracy"] == pytest.approx(0.48 / 0.52)
    assert two["producers_accuracy"] == pytest.approx(0.16 / 0.48)
    assert "Area-adjusted" in format_report(report)


def test_area_adjusted_confidence_intervals_follow_olofsson_2014():
    """Every estimate and 95% interval against the paper's formulas.

    Olofsson et al. (2014, Remote Sensing of Environment 148, 42-57),
    written out here term by term for a 3-class sample stratified by map
    class: i is the map class (stratum), j the reference class, n_ij the
    sample counts, N_i the mapped cells, W_i = N_i / N.
    """
    n = np.array([[40, 5, 5], [6, 30, 4], [2, 3, 25]], dtype=float)
    mapped_cells = {1: 5000, 2: 3000, 3: 2000}
    cell_area = 900.0
    reference, mapped = [], []
    for i in range(3):
        for j in range(3):
            reference += [j + 1] * int(n[i, j])
            mapped += [i + 1] * int(n[i, j])
    counter = PairCounter()
    counter.add(np.array(reference, np.int32), np.array(mapped, np.int32))
    classes = CLASSES + [{"value": 3, "label": "c"}]
    adjusted = accuracy_report(
        counter, classes, mapped_cells=mapped_cells, cell_area=cell_area
    )["area_adjusted"]

    N_i = np.array([5000.0, 3000.0, 2000.0])
    W = N_i / N_i.sum()
    n_i = n.sum(axis=1)
    p = np.array([[W[i] * n[i, j] / n_i[i] for j in range(3)] for i in range(3)])
    # Overall accuracy, eq. (1) and (4).
    overall = sum(p[k, k] for k in range(3))
    users = [n[i, i] / n_i[i] for i in range(3)]
    v_overall = sum(
        W[i] ** 2 * users[i] * (1 - users[i]) / (n_i[i] - 1) for i in range(3)
    )
    assert adjusted["overall_accuracy"] == pytest.approx(overall)
    assert adjusted["overall_accuracy_ci95"] == pytest.approx(1.96 * np.sqrt(v_overall))
    for j, got in enumerate(adjusted["classes"]):
        # User's accuracy, eq. (2) and (5).
        assert got["users_accuracy"] == pytest.approx(users[j])
        assert got["users_accuracy_ci95"] == pytest.approx(
            1.96 * np.sqrt(users[j] * (1 - users[j]) / (n_i[j] - 1))
        )
        # Producer's accuracy, eq. (3) and (7), with the estimated
        # reference total of class j, N_.j = sum_i N_i / n_i. n_ij.
        p_j = sum(p[i, j] for i in range(3))
        producers = p[j, j] / p_j
        N_j = sum(N_i[i] / n_i[i] * n[i, j] for i in range(3))
        own = N_i[j] ** 2 * (1 - producers) ** 2 * users[j] * (1 - users[j])
        own /= n_i[j] - 1
        others = sum(
            N_i[i] ** 2 * (n[i, j] / n_i[i]) * (1 - n[i, j] / n_i[i]) / (n_i[i] - 1)
            for i in range(3)
            if i != j
        )
        v_producers = (own + producers**2 * others) / N_j**2
        assert got["producers_accuracy"] == pytest.approx(producers)
        assert got["producers_accuracy_ci95"] == pytest.approx(
            1.96 * np.sqrt(v_producers)
        )
        # Area of class j, eq. (9), (10) and (11), in map units.
        area = N_i.sum() * cell_area
        s_p = np.sqrt(
            sum(
                W[i] ** 2 * (n[i, j] / n_i[i]) * (1 - n[i, j] / n_i[i]) / (n_i[i] - 1)
                for i in range(3)
            )
        )
        assert got["area"] == pytest.approx(area * p_j)
        assert got["area_ci95"] == pytest.approx(1.96 * area * s_p)
        assert got["mapped_area"] == pytest.approx(N_i[j] * cell_area)
