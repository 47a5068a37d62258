"""A whole training job on a small folder of JPEGs: ``resnet-tune train`` vs the plain loop a user would write.

Both are timed as processes, from start to exit: Python start-up and imports, finding the images, one epoch
of training, a validation pass and a saved checkpoint. Ours is the CLI with its defaults (plus the model,
size and one epoch), which also scans the folder, writes the report and evaluates the best checkpoint. The
baseline is torchvision ``ImageFolder`` + ``DataLoader`` (2 workers) + SGD in fp32, ``torch.save`` at the
end. The folder: --per-class training and --per-class // 3 validation images a class of Imagenette, linked
(not copied) into a temporary folder.

    python benchmarks/whole_epoch.py --model resnet50 --size 224 --per-class 30
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, header  # noqa: E402

PLAIN = textwrap.dedent("""
    import sys, torch, torchvision
    from torchvision import transforms as T
    root, model_name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train = torchvision.datasets.ImageFolder(root + "/train", T.Compose([
        T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm]))
    val = torchvision.datasets.ImageFolder(root + "/val", T.Compose([
        T.Resize(int(size / 0.875)), T.CenterCrop(size), T.ToTensor(), norm]))
    tl = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=2)
    vl = torch.utils.data.DataLoader(val, batch_size=64, num_workers=2)
    model = getattr(torchvision.models, model_name)(num_classes=len(train.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    for x, y in tl:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in vl:
            correct += (model(x).argmax(1) == y).sum().item()
    torch.save(model.state_dict(), root + "/plain.pt")
    print("val accuracy", correct / len(val))
""")


def make_folder(root: Path, per_class: int) -> None:
    src = DATA / "imagenette"
    for cls in sorted(p.name for p in (src / "train").iterdir() if p.is_dir()):
        for split, n in (("train", per_class), ("val", max(per_class // 3, 1))):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in sorted((src / split / cls).iterdir())[:n]:
                os.symlink(f.resolve(), root / split / cls / f.name)


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    print(header(args.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root / "data", args.per_class)
        n = sum(1 for f in (root / "data" / "train").rglob("*") if f.is_file())
        (root / "plain.py").write_text(PLAIN)
        plain, ours = [], []
        for i in range(args.repeats):
            plain.append(timed([sys.executable, str(root / "plain.py"), str(root / "data"), args.model,
                                str(args.size)], root))
            ours.append(timed(["resnet-tune", "train", "--data", str(root / "data"), "--model", args.model,
                           "--pretrained", "none",
                               "--img-size", str(args.size), "--epochs", "1", "--batch-size", "32",
                               "--no-progress", "--output", str(root / f"run{i}")], root))
    p, o = sorted(plain)[len(plain) // 2], sorted(ours)[len(ours) // 2]
    print(f"\n{n} training images, {args.model} at {args.size} px, one epoch + validation + checkpoint\n")
    print("| job | wall seconds | vs plain |\n|---|---|---|")
    print(f"| plain torchvision loop, fp32 (ImageFolder + DataLoader + SGD) | {p:.1f} | 1.00x |")
    print(f"| resnet-tune train (defaults) | {o:.1f} | {p / o:.2f}x |")
    print(f"(command: {' '.join(sys.argv)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
