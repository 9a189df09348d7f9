"""Fine-tuning on Ray Train: one epoch on 2 DDP workers vs 1 worker (and in-process), speed and accuracy.

The quickstart's task (``experiments/quickstart.yaml``: ``mnist_cnn`` on MNIST-5k, 5 epochs of base
training in-process), pruned to the uniform plan at 50 % of FLOPs, is fine-tuned for ``--epochs`` (2)
epochs at the quickstart's lr (``train.lr x finetune.lr_scale``) three ways, each from the same pruned
weights: in-process (``finetune.workers: 0``, torch on all threads), Ray Train with 1 worker and with
2 workers (1 CPU and 1 torch thread each; 2 workers split the global batch of 128 into 2 x 64).

Recorded per way: the seconds of each epoch (from the per-epoch checkpoints: the first includes
building the DDP wrapper and the data loader, the last is the steady state), the wall time of the
whole fit (Ray Train adds starting its controller and workers, importing torch there and opening the
data), and the test accuracy after. The speed-up is the last epoch's time with 1 worker over that with
2 workers. A local Ray with the machine's cores is started once, before the timed fits.

    python -m benchmarks.finetune_scale [--epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import target, write_results

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import ray

    from autoprune.config import load_config
    from autoprune.core.plan import PruningPlan
    from autoprune.core.train import dataset_accuracy
    from autoprune.pipeline import finetune
    from autoprune.pipeline.artifacts import model_spec
    from autoprune.pipeline.session import prepare

    cfg = load_config(ROOT / "experiments" / "quickstart.yaml", ["ray.workers=0"])
    started = time.perf_counter()
    session = prepare(cfg, progress=False)
    prepare_s = time.perf_counter() - started
    ratio = 0.5 ** 0.5  # uniform channel ratio ~ 50 % of the FLOPs of a plain CNN
    plan = PruningPlan.from_counts(session.graph, {u.name: max(1, round(u.out_channels * ratio))
                                                   for u in session.graph.units})
    pruned = session.evaluator().prune(plan)
    kept = session.costs["flops"](plan.counts(session.graph)) / session.costs["flops"].base
    before = dataset_accuracy(pruned, session.data.test)
    lr = cfg.train.lr * cfg.finetune.lr_scale
    spec = model_spec(cfg, session.data, session.input_shape)
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workers in (0, 1, 2):
                ckpt = Path(tmp) / f"w{workers}"
                start = time.perf_counter()
                tuned = finetune.train(copy.deepcopy(pruned), cfg, epochs=args.epochs, lr=lr, workers=workers,
                                       desc="fine-tune", spec=spec, plan=plan, ckpt_dir=ckpt,
                                       train_data=session.data.train_augmented, progress=False)
                wall = time.perf_counter() - start
                records = [torch.load(p, weights_only=True) for p in sorted(ckpt.glob("epoch_*.pt"))]
                rows.append({"workers": workers, "mode": "in-process" if workers == 0 else "Ray Train",
                             "threads": torch.get_num_threads() if workers == 0 else workers,
                             "last_epoch_s": records[-1]["seconds"], "fit_wall_s": wall,
                             "test_accuracy": dataset_accuracy(tuned, session.data.test)})
                print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    by = {r["workers"]: r for r in rows}
    speedup = by[1]["last_epoch_s"] / by[2]["last_epoch_s"]
    load = os.getloadavg()
    table = ["| way | workers | torch threads in all | last epoch (s) | whole fit (s) | test acc. after |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['mode']} | {r['workers']} | {r['threads']} | {r['last_epoch_s']:.2f} | {r['fit_wall_s']:.1f} | "
              f"{r['test_accuracy']:.4f} |" for r in rows]
    notes = (f"\n\nQuickstart task: mnist_cnn on MNIST-5k ({len(session.data.train)} training images), uniform plan "
             f"at {kept:.1%} of FLOPs, test accuracy {before:.4f} before the fine-tune; {args.epochs} epochs at lr "
             f"{lr:g}, global batch {cfg.train.batch_size}. Speed-up of one epoch, 2 workers over 1: "
             f"{speedup:.2f}x. Load average while it ran: {load[0]:.1f} on {os.cpu_count()} cores: other work "
             "shared the machine, so the times are noisy; the whole fit on Ray Train is dominated by starting "
             "the workers, which a quickstart-sized epoch does not pay back.")
    targets = [
        target("2 workers speed up an epoch", "> 1x over 1 worker", f"{speedup:.2f}x", speedup > 1.0),
        target("2 workers keep the accuracy", "within 0.02 of 1 worker",
               f"{by[2]['test_accuracy'] - by[1]['test_accuracy']:+.4f}",
               abs(by[2]["test_accuracy"] - by[1]["test_accuracy"]) <= 0.02),
        target("1 worker = in-process", "same test accuracy",
               f"{by[1]['test_accuracy']:.4f} vs {by[0]['test_accuracy']:.4f}",
               abs(by[1]["test_accuracy"] - by[0]["test_accuracy"]) < 1e-3),
    ]
    data = {"rows": rows, "speedup_2_over_1": speedup, "epochs": args.epochs, "flops_kept": kept,
            "test_accuracy_before": before, "prepare_seconds": prepare_s, "load_average": list(load)}
    write_results("finetune_scale", "\n".join(table) + notes, data, targets, "python -m benchmarks.finetune_scale")


if __name__ == "__main__":
    main()
