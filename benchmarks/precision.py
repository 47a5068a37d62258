"""Is bf16 free? The same training runs in bf16 (the default on CPUs with native bf16) and in fp32.

CIFAR ResNet-20 from scratch on a CIFAR-10 subset (--per-class training and 100 validation images a class,
drawn with a fixed seed from ``../shared/data/cifar10/train``), the full 10,000-image test split for the
figure; each seed in both precisions, everything else the project's defaults. Prints accuracy and
throughput per precision (mean and standard deviation over the seeds).

    python benchmarks/precision.py --work /tmp/prec --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cifar_subset_csv, header, read_metrics, run_or_resume  # noqa: E402

from resnet_tune.tasks.classification import evaluate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    print(header(len(args.seeds)))
    subset = cifar_subset_csv(args.work / f"cifar_{args.per_class}.csv", args.per_class, 100)
    results: dict[str, list[tuple[float, float]]] = {"bf16": [], "fp32": []}
    for seed in args.seeds:
        for precision in results:
            out = args.work / f"{precision}_seed{seed}"
            run_or_resume(out, data=str(subset), model="resnet20", epochs=args.epochs, seed=seed,
                          precision=precision, loader="memory")
            test = out / "test_eval.json"
            if not test.exists():
                rep = evaluate(out, DATA / "cifar10" / "test", progress=False)
                test.write_text(json.dumps({"accuracy": rep["accuracy"]}))
            ips = statistics.mean(r["images_per_s"] for r in read_metrics(out)[1:])
            acc = json.loads(test.read_text())["accuracy"]
            results[precision].append((acc, ips))
            print(f"seed {seed} {precision}: CIFAR-10 test accuracy {acc:.4f}, {ips:.0f} img/s", flush=True)
    print("\n| precision | test accuracy (mean ± sd) | training img/s | runs |\n|---|---|---|---|")
    for precision, rs in results.items():
        accs = [a for a, _ in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {precision} | {100 * statistics.mean(accs):.2f}% ± {100 * sd:.2f} | "
              f"{statistics.mean(i for _, i in rs):.0f} | {len(rs)} |")
    print(f"(command: {' '.join(sys.argv)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
