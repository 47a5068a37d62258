"""Multi-label CSVs in their three forms, task detection, iterative stratification and one sentence per bad CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_tune.errors import ConfigError, DataError
from resnet_tune.tasks.multilabel.data import (MIN_TRAIN_POSITIVES, detect_csv_task, discover_multilabel,
                                               iterative_split, read_label_csv)


def _images(root: Path, n: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 7 % 256, 0, 0)).save(root / f"im{i}.png")
        names.append(f"im{i}.png")
    return names


SETS = [("cat", "dog"), ("cat",), (), ("dog", "bird"), ("bird",), ("cat", "bird"), ("dog",), ("cat", "dog", "bird")]


def _write_forms(tmp_path: Path) -> dict[str, Path]:
    names = _images(tmp_path, len(SETS))
    out = {}
    out["semicolon"] = tmp_path / "semi.csv"
    out["semicolon"].write_text("path,labels\n" + "".join(f"{n},{';'.join(s)}\n" for n, s in zip(names, SETS)))
    out["space"] = tmp_path / "space.csv"
    out["space"].write_text("image\ttags\n" + "".join(f"{n}\t{' '.join(s)}\n" for n, s in zip(names, SETS)))
    out["quoted_comma"] = tmp_path / "comma.csv"
    out["quoted_comma"].write_text("path,labels\n" + "".join(f'{n},"{",".join(s)}"\n' for n, s in zip(names, SETS)))
    out["indicators"] = tmp_path / "ind.csv"
    out["indicators"].write_text("path,bird,cat,dog\n" + "".join(
        f"{n},{int('bird' in s)},{int('cat' in s)},{int('dog' in s)}\n" for n, s in zip(names, SETS)))
    out["rows"] = tmp_path / "rows.csv"
    out["rows"].write_text("path,label\n" + "".join(f"{n},{lab}\n" for n, s in zip(names, SETS) for lab in s)
                           + f"{names[2]},\n")
    return out


def test_the_three_forms_give_the_same_label_sets(tmp_path: Path) -> None:
    forms = _write_forms(tmp_path)
    expected = {str((tmp_path / f"im{i}.png").resolve()): set(s) for i, s in enumerate(SETS)}
    for name, path in forms.items():
        table = read_label_csv(str(path))
        assert table.form == {"indicators": "indicators", "rows": "rows"}.get(name, "labels"), name
        s = discover_multilabel(str(path), val_fraction=0.25, seed=0)
        assert s.labels == ["bird", "cat", "dog"]
        got = {p: {s.labels[j] for j in labs} for p, labs in s.train + s.val}
        assert got == expected, name
        assert detect_csv_task(str(path))[0] == "multilabel", name


def test_task_detection_keeps_single_label_csvs_and_names_with_spaces(tmp_path: Path) -> None:
    names = _images(tmp_path, 4)
    single = tmp_path / "single.csv"
    single.write_text("path,label\n" + "".join(f"{n},golden retriever\n" for n in names))
    assert detect_csv_task(str(single)) == ("classification", "every image has one label")
    assert read_label_csv(str(single)).rows[0].labels == ("golden retriever",)
    # --label-sep overrides: a space splits even under a singular column name
    assert read_label_csv(str(single), label_sep="space").rows[0].labels == ("golden", "retriever")
    with pytest.raises(ConfigError, match="label-sep"):
        read_label_csv(str(single), label_sep="")


def test_iterative_split_keeps_every_label_in_both_splits_where_it_can() -> None:
    rng = np.random.default_rng(0)
    sets = []
    for i in range(300):
        labs = [j for j in range(12) if rng.random() < (0.3 if j < 6 else 0.02)]
        sets.append(tuple(labs))
    sets += [(12,), (13,), (13,)]  # one image (cannot be in both) and two images (must be)
    tr, va = iterative_split(sets, 14, 0.2, seed=3)
    assert sorted(tr + va) == list(range(len(sets))) and not set(tr) & set(va)
    assert abs(len(va) - 0.2 * len(sets)) <= 3
    for lab in range(14):
        n_tr = sum(lab in sets[i] for i in tr)
        n_va = sum(lab in sets[i] for i in va)
        if n_tr + n_va >= 2:
            assert n_tr and n_va, lab
        if n_tr + n_va >= 20:  # proportions kept for the common labels
            assert abs(n_va / (n_tr + n_va) - 0.2) < 0.06, lab
    assert iterative_split(sets, 14, 0.2, seed=3) == (tr, va)  # deterministic


def test_split_column_vocabulary_and_summary(tmp_path: Path) -> None:
    names = _images(tmp_path, 12)
    rows = [(n, "cat;dog" if i % 2 else "cat", "val" if i >= 9 else "train") for i, n in enumerate(names)]
    rows[3] = (names[3], "", "train")
    csv = tmp_path / "s.csv"
    csv.write_text("path,labels,split\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    s = discover_multilabel(str(csv))
    assert len(s.train) == 9 and len(s.val) == 3 and s.test is None
    assert s.targets("train").shape == (9, 2) and s.targets("train")[3].sum() == 0
    summary = s.label_summary()
    assert "cat" in summary and "1 image(s) have no label" in summary
    assert f"fewer than {MIN_TRAIN_POSITIVES} training images" in summary and "'dog'" in summary  # 4 dogs in train
    assert "multi-label CSV (labels form, separator ';')" in s.describe()


@pytest.mark.parametrize("content,message", [
    ("path,labels\n{a},cat\nmissing.png,dog\n", r"1 file\(s\) listed in .* do not exist \(first: 'missing.png'\)"),
    ("path,width\n{a},3\n", "has no labels column and no 0/1 label columns"),
    ("path,labels,cat,dog\n{a},cat,1,0\n", r"both a labels column \('labels'\) and 0/1 label columns \('cat', 'dog'\)"),
    ("path,labels,split\n{a},cat,train\n{b},zebra,val\n", r"val rows .* label\(s\) 'zebra' that no training image has"),
    ("path,labels,split\n{a},cat,train\n{a},dog,val\n", r"in split train on line 2 .* and in val on line 3"),
    ("labels,split\ncat,train\n", "no path column"),
    ("path,labels\n", "header but no rows"),
    ("path,labels\n{a},\n{b},\n", "No training image of .* has a label"),
])
def test_bad_csvs_get_one_sentence(tmp_path: Path, content: str, message: str) -> None:
    a, b = _images(tmp_path, 2)
    csv = tmp_path / "bad.csv"
    csv.write_text(content.format(a=a, b=b))
    with pytest.raises(DataError, match=message) as e:
        discover_multilabel(str(csv))
    assert "\n" not in str(e.value)
