"""GPU check: the quickstart search and fine-tune on ``cuda`` vs ``cpu``, scoring throughput, CUDA latency.

    python -m benchmarks.gpu_check            # on a machine with a CUDA GPU
    python -m benchmarks.gpu_check --quick    # fewer evaluations and epochs (a smoke run)

What it checks (``runtime:`` section, :mod:`autoprune.device`):

1. the same quickstart-sized experiment (``experiments/quickstart.yaml``, in-process scoring) searched
   and fine-tuned with ``runtime.device: cpu`` and ``cuda``, from one shared base checkpoint (trained
   once on the CPU): the best plans' quality is equal within noise (val accuracy before the fine-tune
   and test accuracy after it within ``TOLERANCE``), and the wall times of search and fine-tune;
2. scoring throughput (plans per second through the evaluator: prune, adaptive BN, val accuracy) on
   the CPU, on CUDA in fp32, and on CUDA with ``amp: bf16`` + ``channels_last``;
3. the base model's CUDA latency (batch 1 and 64, CUDA events).

Writes ``benchmarks/results/gpu_check.json`` and ``.md``. Without CUDA it says so and writes nothing
(exit code 1). It has not run on a GPU yet (see docs/distributed.md).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.atomic import atomic_write_with
from autoprune.config import load_config, read_yaml
from autoprune.device import Device, cpu_state
from autoprune.pipeline.artifacts import read_summary
from autoprune.pipeline.run import run_search
from autoprune.pipeline.session import prepare
from benchmarks.common import ROOT, target, write_results

QUICKSTART = ROOT.parent / "experiments" / "quickstart.yaml"
TOLERANCE = 0.02
"""Plan quality on cuda and cpu is "equal within noise" when accuracies differ by at most this."""
SCORING_PLANS = 20


def experiment(quick: bool, device: str, checkpoint: Path | None = None, **runtime: Any):
    raw = read_yaml(QUICKSTART)
    raw["ray"] = {"workers": 0}  # in-process: the device is the only difference
    raw["runtime"] = {"device": device, **runtime}
    if quick:
        raw["searcher"] = {"name": "random", "evaluations": 8}
        raw["finetune"] = {**raw.get("finetune", {}), "epochs": 1}
        raw["train"] = {**raw.get("train", {}), "epochs": 1}
    if checkpoint is not None:
        raw["model"] = {**raw["model"], "checkpoint": str(checkpoint)}
    return load_config(raw)


def search_and_finetune(quick: bool, device: str, checkpoint: Path, out: Path) -> dict[str, Any]:
    cfg = experiment(quick, device, checkpoint)
    run_dir = run_search(cfg, out=out / device, progress=False)
    s = read_summary(run_dir)
    return {"device": device, "val_accuracy_before_finetune": s["pruned"]["val_accuracy_before_finetune"],
            "test_accuracy_after_finetune": s["pruned"]["test_accuracy_after_finetune"],
            "flops_kept": s["pruned"]["flops_kept"], "search_seconds": s["timing"]["search_seconds"],
            "finetune_seconds": s["timing"]["finetune_seconds"], "evaluations": s["evaluations"]}


def scoring_throughput(quick: bool, checkpoint: Path, device: str, **runtime: Any) -> dict[str, Any]:
    session = prepare(experiment(quick, device, checkpoint, **runtime), progress=False)
    ev = session.evaluator()
    ctx = session.context(ev)
    rng = np.random.default_rng(0)
    plans = [ctx.plan_from_ratios(ctx.fit_to_budget(rng.uniform(0.2, 1.0, len(session.graph))))
             for _ in range(SCORING_PLANS // (4 if quick else 1))]
    ev.evaluate(plans[0])  # warm-up (CUDA context, kernels)
    ev.cache.clear()
    session.runtime.synchronize()
    start = time.perf_counter()
    accs = [ev.evaluate(p).accuracy for p in plans]
    session.runtime.synchronize()
    seconds = time.perf_counter() - start
    label = device + "".join(f" {k}={v}" for k, v in runtime.items())
    return {"setting": label, "plans": len(plans), "seconds": seconds, "plans_per_second": len(plans) / seconds,
            "mean_accuracy": float(np.mean(accs))}


def cuda_latency(checkpoint: Path, quick: bool) -> list[dict[str, Any]]:
    from autoprune.latency.timing import measure_latency

    session = prepare(experiment(quick, "cpu", checkpoint), progress=False)
    model = Device(torch.device("cuda")).place(copy.deepcopy(session.model)).eval()
    rows = []
    for batch in (1, 64):
        stats = measure_latency(model, session.input_shape, batch=batch, repeats=10 if quick else 30)
        rows.append({"batch": batch, "median_ms": stats.median_ms, "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer evaluations and epochs (a smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: this machine has no CUDA device (torch.cuda.is_available() is False); run it on a "
              "machine with an NVIDIA GPU. Nothing was written.", file=sys.stderr)
        return 1
    gpu = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="autoprune-gpu-check-") as tmp:
        out = Path(tmp)
        base = prepare(experiment(args.quick, "cpu"), progress=False)  # the base model, trained once on the CPU
        checkpoint = out / "base.pt"
        atomic_write_with(checkpoint, lambda buf: torch.save(cpu_state(base.model), buf))
        runs = [search_and_finetune(args.quick, d, checkpoint, out) for d in ("cpu", "cuda")]
        scoring = [scoring_throughput(args.quick, checkpoint, "cpu"),
                   scoring_throughput(args.quick, checkpoint, "cuda"),
                   scoring_throughput(args.quick, checkpoint, "cuda", amp="bf16", channels_last=True)]
        latency = cuda_latency(checkpoint, args.quick)
    cpu, cuda = runs
    val_gap = abs(cpu["val_accuracy_before_finetune"] - cuda["val_accuracy_before_finetune"])
    test_gap = abs(cpu["test_accuracy_after_finetune"] - cuda["test_accuracy_after_finetune"])
    speedup = scoring[1]["plans_per_second"] / scoring[0]["plans_per_second"]
    lines = ["| device | val acc (pruned) | test acc (fine-tuned) | FLOPs kept | search s | fine-tune s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['device']} | {r['val_accuracy_before_finetune']:.4f} | {r['test_accuracy_after_finetune']:.4f} | "
              f"{r['flops_kept']:.3f} | {r['search_seconds']:.1f} | {r['finetune_seconds']:.1f} |" for r in runs]
    lines += ["", "| scoring | plans | plans/s | mean acc |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['plans']} | {r['plans_per_second']:.2f} | {r['mean_accuracy']:.4f} |"
              for r in scoring]
    lines += ["", "| CUDA latency, batch | median ms |", "|---|---|"]
    lines += [f"| {r['batch']} | {r['median_ms']:.3f} |" for r in latency]
    targets = [target("plan quality cuda vs cpu (val, before fine-tune)", f"|gap| <= {TOLERANCE}",
                      round(val_gap, 4), val_gap <= TOLERANCE),
               target("fine-tuned test accuracy cuda vs cpu", f"|gap| <= {TOLERANCE}", round(test_gap, 4),
                      test_gap <= TOLERANCE),
               target("scoring throughput cuda / cpu", "> 1", round(speedup, 2), speedup > 1)]
    command = "python -m benchmarks.gpu_check" + (" --quick" if args.quick else "")
    write_results("gpu_check", f"GPU: {gpu}\n\n" + "\n".join(lines),
                  {"gpu": gpu, "runs": runs, "scoring": scoring, "cuda_latency": latency}, targets, command)
    return 0 if all(t["met"] for t in targets) else 3


if __name__ == "__main__":
    sys.exit(main())
