"""Multi-label metrics against scikit-learn, and thresholds tuned on validation that help on a test split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, hamming_loss, precision_recall_fscore_support

from resnet_tune.eval.multilabel import average_precision, multilabel_report, tune_thresholds


def _case(seed: int, n: int = 300, labels: int = 7, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = (rng.random((n, labels)) < rng.uniform(0.05, 0.5, labels)).astype(int)
    s = np.clip(0.35 * t + rng.random((n, labels)) * 0.8, 0, 1)
    if ties:  # coarse scores: many equal values, the case where AP implementations differ
        s = np.round(s, 1)
    t[:, -1] = 0  # a label without positives: left out of macro figures
    return t, s


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
def test_metrics_equal_scikit_learn(seed: int, ties: bool) -> None:
    t, s = _case(seed, ties=ties)
    labels = [f"l{j}" for j in range(t.shape[1])]
    keep = t.sum(0) > 0
    ap = average_precision(t, s)
    assert np.isnan(ap[-1]) and not np.isnan(ap[:-1]).any()
    for j in np.flatnonzero(keep):
        assert ap[j] == pytest.approx(average_precision_score(t[:, j], s[:, j]), abs=1e-6)
    th = np.linspace(0.3, 0.7, t.shape[1])
    r = multilabel_report(s, t, labels, th)
    pred = (s >= th).astype(int)
    assert r["macro_map"] == pytest.approx(average_precision_score(t[:, keep], s[:, keep], average="macro"), abs=1e-6)
    assert r["micro_map"] == pytest.approx(average_precision_score(t, s, average="micro"), abs=1e-6)
    assert r["micro_f1"] == pytest.approx(f1_score(t, pred, average="micro", zero_division=0), abs=1e-6)
    assert r["macro_f1"] == pytest.approx(f1_score(t[:, keep], pred[:, keep], average="macro", zero_division=0),
                                          abs=1e-6)
    assert r["hamming_loss"] == pytest.approx(hamming_loss(t, pred), abs=1e-6)
    assert r["exact_match"] == pytest.approx(float((pred == t).all(1).mean()), abs=1e-12)
    p, rec, f, sup = precision_recall_fscore_support(t, pred, average=None, zero_division=0)
    for j, row in enumerate(r["per_label"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[j], rec[j], f[j], sup[j]), abs=1e-6)
        assert row["threshold"] == pytest.approx(th[j])
    assert r["left_out"] == ["l6"] and r["per_label"][-1]["ap"] is None


def test_bad_shapes_and_values_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(images, labels\)"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0 or 1"):
        average_precision(np.full((3, 2), 2), np.zeros((3, 2)))


def test_tuned_thresholds_beat_one_half_on_a_separate_test_split() -> None:
    """Scores squeezed into [0.05, 0.35] (a model trained on rare labels): 0.5 predicts nothing; thresholds tuned
    on validation recover most of the F1 on a test split drawn the same way."""

    def split(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        t = (rng.random((400, 5)) < 0.2).astype(int)
        return t, 0.05 + 0.2 * t * rng.uniform(0.5, 1.5, t.shape) + 0.1 * rng.random(t.shape)

    (tv, sv), (tt, st) = split(10), split(11)
    tuned = tune_thresholds(tv, sv)
    assert not tuned.fallback and (tuned.values < 0.35).all()
    labels = list("abcde")
    at_half = multilabel_report(st, tt, labels)
    at_tuned = multilabel_report(st, tt, labels, tuned.values)
    assert at_half["micro_f1"] < 0.1 and at_tuned["micro_f1"] > 0.8
    assert at_tuned["macro_f1"] > at_half["macro_f1"] + 0.5
    # the validation F1 the tuning saw is the best any threshold gives on validation (for each label)
    for j in range(5):
        best = max(f1_score(tv[:, j], (sv[:, j] >= v).astype(int)) for v in np.unique(sv[:, j]))
        assert f1_score(tv[:, j], (sv[:, j] >= tuned.values[j]).astype(int)) == pytest.approx(best, abs=1e-9)


def test_rare_labels_fall_back_to_the_global_threshold_and_precision_targets() -> None:
    t, s = _case(5, n=200, labels=4)
    t[:, 0] = 0
    t[:3, 0] = 1  # three positives: below the minimum for a threshold of its own
    tuned = tune_thresholds(t, s)
    assert 0 in tuned.fallback and 3 in tuned.fallback  # too few positives; none at all
    assert tuned.values[0] == tuned.global_threshold and 1 not in tuned.fallback
    d = tuned.to_dict(["a", "b", "c", "d"])
    assert d["fallback"] == ["a", "d"] and d["rule"] == "f1" and set(d["per_label"]) == {"a", "b", "c", "d"}
    precise = tune_thresholds(t, s, target_precision=0.9)
    for j in (1, 2):
        pred = s[:, j] >= precise.values[j]
        if j not in precise.fallback:
            assert t[pred, j].mean() >= 0.9
            # the most recall at that precision: any lower distinct score breaks the target
            lower = [v for v in np.unique(s[:, j]) if v < precise.values[j]]
            if lower:
                assert t[s[:, j] >= max(lower), j].mean() < 0.9
    assert precise.rule == "precision>=0.9"
