"""Evaluation metrics agree with scikit-learn, a hand-worked example, and serialise to JSON."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from resnet_tune.eval.metrics import (
    classification_report,
    confusion_matrix,
    format_report,
    per_class_metrics,
    topk_accuracy,
)


def _random(n: int = 500, c: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c))
    targets = rng.integers(0, c, size=n)
    logits[np.arange(n), targets] += 1.0  # better than chance, still many mistakes
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_on_random_data(seed: int) -> None:
    probs, t = _random(seed=seed, c=7 + seed)
    c = probs.shape[1]
    pred = probs.argmax(1)
    labels = list(range(c))
    cm = confusion_matrix(t, pred, c)
    assert cm.dtype == np.int64 and cm.shape == (c, c)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(t, pred, labels=labels))

    m = per_class_metrics(cm)
    p, r, f, s = skm.precision_recall_fscore_support(t, pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(m["precision"], p)
    np.testing.assert_allclose(m["recall"], r)
    np.testing.assert_allclose(m["f1"], f)
    np.testing.assert_array_equal(m["support"], s)

    rep = classification_report(probs, t, [f"c{i}" for i in range(c)])
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(t, pred))
    assert rep["macro_f1"] == pytest.approx(skm.f1_score(t, pred, average="macro", zero_division=0))
    assert rep["top5"] == pytest.approx(skm.top_k_accuracy_score(t, probs, k=5, labels=labels))
    for k in range(1, c):  # sklearn refuses k == C ("trivially 1")
        assert topk_accuracy(probs, t, k) == pytest.approx(skm.top_k_accuracy_score(t, probs, k=k, labels=labels))
    assert topk_accuracy(probs, t, c) == 1.0
    assert [row["precision"] for row in rep["per_class"]] == pytest.approx(p.tolist())
    assert [row["support"] for row in rep["per_class"]] == s.tolist()


def test_top1_equals_argmax_accuracy_even_with_ties() -> None:
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    t = np.array([1, 1, 2])
    # argmax picks the lowest tied index: preds 0, 1, 0 -> only sample 1 right.
    assert topk_accuracy(scores, t, 1) == pytest.approx(np.mean(scores.argmax(1) == t)) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, t, 2) == pytest.approx(2 / 3)


def test_hand_computed_example() -> None:
    classes = ["cat", "dog", "fox"]
    # true:  cat cat cat dog dog fox ; pred: cat cat dog dog fox cat
    probs = np.array([
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.6, 0.1],   # cat -> dog, p(true)=0.3
        [0.2, 0.7, 0.1],
        [0.1, 0.3, 0.6],   # dog -> fox, p(true)=0.3 (later index)
        [0.5, 0.3, 0.2],   # fox -> cat, p(true)=0.2 (worst)
    ])
    t = np.array([0, 0, 0, 1, 1, 2])
    cm = confusion_matrix(t, probs.argmax(1), 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [1, 0, 0]])
    m = per_class_metrics(cm)
    np.testing.assert_allclose(m["precision"], [2 / 3, 1 / 2, 0.0])
    np.testing.assert_allclose(m["recall"], [2 / 3, 1 / 2, 0.0])
    np.testing.assert_allclose(m["f1"], [2 / 3, 1 / 2, 0.0])
    np.testing.assert_array_equal(m["support"], [3, 2, 1])

    rep = classification_report(probs, t, classes, files=[f"img{i}.jpg" for i in range(6)])
    assert rep["num_samples"] == 6
    assert rep["accuracy"] == pytest.approx(3 / 6)
    assert rep["top5"] is None  # only 3 classes
    assert rep["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert rep["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert rep["per_class"][0] == {"class": "cat", "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                   "f1": pytest.approx(2 / 3), "support": 3}
    worst = rep["worst"]
    assert [w["file"] for w in worst] == ["img5.jpg", "img2.jpg", "img4.jpg"]
    assert worst[0] == {"file": "img5.jpg", "true": "fox", "pred": "cat", "prob_true": pytest.approx(0.2),
                        "prob_pred": pytest.approx(0.5)}
    assert (worst[1]["true"], worst[1]["pred"]) == ("cat", "dog")


def test_worst_ordering_limit_and_index_names() -> None:
    probs, t = _random(n=300, c=10, seed=3)
    rep = classification_report(probs, t, [str(i) for i in range(10)], worst_n=16)
    worst = rep["worst"]
    assert len(worst) == 16
    pt = [w["prob_true"] for w in worst]
    assert pt == sorted(pt)
    wrong = probs.argmax(1) != t
    expected = np.sort(probs[np.arange(300), t][wrong])[:16]
    np.testing.assert_allclose(pt, expected)
    for w in worst:
        i = int(w["file"])  # files=None -> sample index as a string
        assert wrong[i] and w["true"] == str(t[i]) and w["pred"] == str(probs[i].argmax())
        assert w["prob_pred"] == pytest.approx(probs[i].max())
    # fewer mistakes than worst_n -> all of them; none -> empty
    few = classification_report(np.eye(4)[[0, 1, 2, 3, 1]], np.array([0, 1, 2, 3, 0]), list("abcd"))
    assert [w["file"] for w in few["worst"]] == ["4"]
    assert classification_report(np.eye(3), np.arange(3), list("abc"))["worst"] == []


def test_report_is_json_serialisable_with_plain_types() -> None:
    probs, t = _random(n=120, c=12, seed=4)
    rep = classification_report(probs.astype(np.float32), t.astype(np.int32), [f"class {i}" for i in range(12)],
                                files=[f"/data/x/{i}.png" for i in range(120)])
    back = json.loads(json.dumps(rep))
    assert back["num_samples"] == 120 and isinstance(back["top5"], float)

    def walk(o):
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        else:
            assert o is None or type(o) in (int, float, str), type(o)

    walk(rep)


def test_zero_division_gives_zero_without_warnings() -> None:
    cm = np.array([[3, 0, 0], [2, 0, 0], [0, 0, 0]])  # class 1 never predicted, class 2 absent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = per_class_metrics(cm)
        rep = classification_report(np.array([[0.9, 0.1, 0.0]] * 2), np.array([0, 0]), list("abc"))
    np.testing.assert_array_equal(m["precision"], [0.6, 0.0, 0.0])
    np.testing.assert_array_equal(m["recall"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(m["f1"], [0.75, 0.0, 0.0])
    assert rep["macro_f1"] == 1.0  # only class "a" occurs, as sklearn's macro average


def test_errors() -> None:
    probs, t = _random(n=10, c=4)
    with pytest.raises(ValueError, match="top-5"):
        topk_accuracy(probs, t, 5)
    with pytest.raises(ValueError):
        topk_accuracy(probs, t, 0)
    with pytest.raises(ValueError):
        confusion_matrix([0, 4], [0, 1], 4)  # label out of range
    with pytest.raises(ValueError):
        classification_report(probs, t, ["a", "b"])  # wrong number of class names
    with pytest.raises(ValueError):
        classification_report(probs, t, list("abcd"), files=["x"])


def test_format_report_table() -> None:
    probs, t = _random(n=200, c=8, seed=5)
    classes = ["airplane", "car", "bird", "cat", "deer", "dog", "frog", "a_really_long_class_name_here"]
    rep = classification_report(probs, t, classes, files=[f"f{i}.jpg" for i in range(200)])
    text = format_report(rep, classes)
    assert "accuracy" in text and "top-5" in text and "macro-F1" in text
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("class"))
    table = [ln for ln in lines if any(ln.startswith(c) for c in classes)]
    assert len(table) == 8
    assert len({len(ln) for ln in table + [header]}) == 1  # columns aligned
    assert "worst" in text and rep["worst"][0]["file"] in text
    assert "top-5" not in format_report(classification_report(np.eye(3), np.arange(3), list("abc")), list("abc"))
