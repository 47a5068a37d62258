"""``resnet-tune train``, ``lr-find``, ``evaluate``, ``predict``, ``embed`` and ``models``: image classification."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Callable

from .options import add_config_options, config_values

TASK_CHOICES = ("auto", "classification", "classify", "multilabel")  # classify: classification's short name


def _add_train_options(p: argparse.ArgumentParser, multilabel: bool = False) -> None:
    from ..tasks.classification.config import ClassificationConfig

    if not multilabel:
        add_config_options(p, ClassificationConfig)
        return
    from ..tasks.multilabel.config import MultiLabelConfig

    p.add_argument("--task", choices=TASK_CHOICES, default="auto",
                   help="auto: multi-label when --data is a CSV that gives images several labels (several in a "
                        "field, 0/1 columns or repeated paths), else one class an image")
    add_config_options(p, ClassificationConfig, also=MultiLabelConfig, also_tag="(multi-label) ")


def _choose_task(task: str, values: dict, say: Callable[[str], None]) -> str:
    """The task of a ``train`` run: as given, or read from the data (a multi-label CSV)."""
    if task != "auto":
        return task
    data = values.get("data")
    if isinstance(data, str) and data.lower().endswith((".csv", ".tsv")) and Path(data).is_file():
        from ..tasks.multilabel.data import detect_csv_task

        found, why = detect_csv_task(data, values.get("label_sep"))
        if found == "multilabel":
            say(f"multi-label data: {data} gives images several labels ({why}); --task classification overrides")
        return found
    return "classification"


def _train_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..engine.config import from_dict
    from ..errors import ConfigError
    from ..tasks.classification.config import ClassificationConfig

    if not hasattr(args, "task"):  # a command without multi-label options (lr-find)
        return from_dict(config_values(args, ClassificationConfig),
                         source=getattr(args, "config", None) or "command line", cls=ClassificationConfig)
    from ..tasks.multilabel.config import MultiLabelConfig

    values = config_values(args, MultiLabelConfig)
    from_file = values.pop("task", None)  # a YAML file may name the task; the flag wins
    task = args.task if args.task != "auto" else str(from_file or "auto")
    if task not in TASK_CHOICES:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASK_CHOICES)}.")
    task = "classification" if task == "classify" else task
    task = _choose_task(task, values, print)
    cls = MultiLabelConfig if task == "multilabel" else ClassificationConfig
    if cls is ClassificationConfig:
        own = {f.name for f in dataclasses.fields(ClassificationConfig)}
        theirs = {f.name for f in dataclasses.fields(MultiLabelConfig)} - own
        stray = sorted(k for k in values if k in theirs)  # unknown keys: from_dict names them
        if stray:
            raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in stray)} appl"
                              f"{'ies' if len(stray) == 1 else 'y'} to multi-label runs only (--task multilabel).")
    return from_dict(values, source=getattr(args, "config", None) or "command line", cls=cls)


def cmd_train(args: argparse.Namespace) -> int:
    from ..tasks.multilabel.config import MultiLabelConfig
    from ..tasks.registry import fit

    from . import STARTED

    if args.resume:  # the run's own task and options; flags may change only where and how visibly it runs
        names = {f.name for f in dataclasses.fields(MultiLabelConfig)}
        fit(resume=args.resume, started=STARTED, **{k: getattr(args, k) for k in names if hasattr(args, k)})
        return 0
    fit(_train_config(args), started=STARTED)
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from ..engine.lr_find import lr_find
    from ..tasks.classification import ClassificationTask

    cfg = _train_config(args)
    out = args.output_dir or "lr-find"
    res = lr_find(ClassificationTask, cfg, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, output=out)
    sug = res["suggestion"]
    print(f"suggested learning rate: {sug:.3g}" if sug else "no suggestion: the loss did not fall; try more steps")
    print(f"plot: {res.get('plot')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import resolve_checkpoint
    from ..tasks.classification import evaluate
    from ..eval.metrics import format_report

    out = args.output
    ck = resolve_checkpoint(args.checkpoint)
    if out is None:
        out = ck.parent / (f"evaluate-{Path(args.data).name or 'data'}" if args.data else "evaluate-val")
    from ..engine.checkpoint import read_record

    if read_record(ck).get("task") == "multilabel":
        from ..tasks.multilabel.evaluation import evaluate_multilabel, format_multilabel

        report = evaluate_multilabel(args.checkpoint, args.data, batch_size=args.batch_size, device=args.device,
                                     output=out, backend=args.backend, tta=args.tta)
        print(format_multilabel(report))
        print(f"details: {out}/eval.json, {out}/label_ap.png, {out}/error_cooccurrence.png")
        return 0
    report = evaluate(args.checkpoint, args.data, batch_size=args.batch_size, device=args.device, output=out,
                      backend=args.backend, tta=args.tta)
    if args.data is None:
        print(f"evaluated on the run's own validation split ({report['data']})")
    print(format_report(report))
    if report.get("skipped"):
        print(f"skipped {len(report['skipped'])} unreadable file(s); see {out}/eval.json")
    print(f"details: {out}/eval.json, {out}/confusion.png")
    return 0


def _say_backend(msg: str) -> None:
    print(msg, flush=True)


def _write_predictions(results: list[dict], output: str) -> None:
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(results, indent=2))
    elif path.suffix.lower() == ".csv":
        import csv

        k = max((len(r["top"]) for r in results), default=0)
        multi = any("labels" in r for r in results)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file"] + (["labels"] if multi else [])
                       + [c for i in range(1, k + 1) for c in (f"class_{i}", f"prob_{i}")] + ["error"])
            for r in results:
                cells = [c for t in r["top"] for c in (t["class"], f"{t['prob']:.6f}")]
                cells += [""] * (2 * k - len(cells))
                labels = [";".join(t["label"] for t in r.get("labels", []))] if multi else []
                w.writerow([r["file"], *labels, *cells, r.get("error") or ""])
    else:
        from ..errors import ConfigError

        raise ConfigError(f"--output must end in .csv or .json, got {output}.")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data.datasets import list_images
    from ..errors import CheckpointError
    from ..tasks.registry import Predictor

    files = list_images(args.images)
    pred = Predictor(args.checkpoint, device=args.device, batch_size=args.batch_size, backend=args.backend,
                     say=_say_backend, tta=args.tta)
    if pred.task not in ("classification", "multilabel"):
        raise CheckpointError(f"{args.checkpoint} is a {pred.task} checkpoint; use resnet-tune segment predict.")
    results = pred.predict_files(files, top_k=args.top_k)
    for r in results:
        if r.get("error"):
            print(f"{r['file']}: skipped ({r['error']})")
        elif "labels" in r:  # multi-label: the labels over their thresholds
            found = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["labels"]) or "no label over its threshold"
            print(f"{r['file']}: {found}")
        else:
            tops = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
            print(f"{r['file']}: {tops}")
    if args.output:
        _write_predictions(results, args.output)
        print(f"wrote {len(results)} predictions to {args.output}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.datasets import list_images
    from ..tasks.classification import ClassificationPredictor

    files = list_images(args.images)
    pred = ClassificationPredictor(args.checkpoint, device=args.device, batch_size=args.batch_size,
                                   backend=args.backend, say=_say_backend)
    feats, kept, skipped = pred.embed_files(files)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, feats)
    order = out.with_suffix(".files.txt")
    order.write_text("".join(f"{p}\n" for p in kept))
    for p in skipped:
        print(f"{p}: skipped (unreadable)")
    print(f"wrote {feats.shape[0]} x {feats.shape[1] if feats.ndim == 2 else 0} features to {out}; file order in "
          f"{order}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The model table, read from the precomputed ``models/model_table.json`` (no PyTorch import)."""
    import fnmatch

    table = json.loads((Path(__file__).parents[1] / "models" / "model_table.json").read_text(encoding="utf-8"))
    rows = [r for r in table if fnmatch.fnmatchcase(r["name"], args.pattern)]
    if not rows:
        import difflib

        from ..errors import ConfigError

        names = [r["name"] for r in table]
        close = difflib.get_close_matches(args.pattern.strip("*?"), names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"no model matches {args.pattern!r}; {hint}`resnet-tune models` lists all {len(names)}.")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<20} {'params':>12} {'GMACs':>8} {'GFLOPs':>8} {'input':>9}  description")
    for r in rows:
        desc = r["description"] if len(r["description"]) <= 70 else r["description"][:67] + "..."
        print(f"{r['name']:<20} {r['num_params'] / 1e6:>11.2f}M {r['gmacs']:>8.2f} {r['gflops']:>8.2f} "
              f"{r['input_size'][1]:>4}x{r['input_size'][2]:<4}  {desc}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``train``, ``lr-find``, ``evaluate``, ``predict`` and ``embed``."""
    p = add("train", cmd_train, "train or fine-tune a model on a folder of images",
            "Train or fine-tune a ResNet. Every option can also come from a YAML file (--config); flags win.")
    p.add_argument("--config", help="YAML file of options (keys as the flags, with - or _)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch")
    _add_train_options(p, multilabel=True)

    p = add("lr-find", cmd_lr_find, "learning-rate range test with a plot and a suggested rate")
    p.add_argument("--config", help="YAML file of options (keys as the flags, with - or _)")
    p.add_argument("--start-lr", type=float, default=1e-6, help="learning rate of the first step")
    p.add_argument("--end-lr", type=float, default=10.0, help="learning rate of the last step")
    p.add_argument("--steps", type=int, default=100, help="steps (batches) of the range test")
    p.add_argument("--output-dir", help="where to write lr_find.png and lr_find.json (default: ./lr-find)")
    _add_train_options(p)

    def model_cmd(p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder (its best checkpoint) or a "
                                                                ".safetensors checkpoint")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
        p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
        p.add_argument("--backend", default="torch", choices=["auto", "torch", "onnxruntime", "openvino"],
                       help="inference engine: torch, onnxruntime or openvino (the CPU engines run a float ONNX "
                            "export of the checkpoint, or an exported .onnx/.xml file such as an int8 model), or auto "
                            "(times the installed ones on this checkpoint and takes the fastest; cached)")

    def tta_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tta", action="store_true", help="flip test-time augmentation: average the outputs for "
                                                          "each image and its mirror image (twice the cost)")

    p = add("evaluate", cmd_evaluate, "accuracy, per-class metrics, confusion matrix and worst images")
    model_cmd(p)
    p.add_argument("--data", help="labelled images: class folders, a split layout (its test or val split) or a CSV "
                                  "(default: the run's own validation split, as recorded in its val.csv)")
    p.add_argument("--output", help="folder for eval.json and plots (default: beside the checkpoint)")
    tta_flag(p)

    p = add("predict", cmd_predict, "top-k classes for images")
    model_cmd(p)
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=5, help="classes to report per image")
    p.add_argument("--output", help="write the predictions to FILE.csv or FILE.json")
    tta_flag(p)

    p = add("embed", cmd_embed, "pooled features for similarity search")
    model_cmd(p)
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders (searched recursively)")
    p.add_argument("--output", required=True, help="FILE.npy; the file order goes to FILE.files.txt")


def register_models(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``models`` (last in the command list)."""
    p = add("models", cmd_models, "list the available architectures with parameters and FLOPs")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*' (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
