"""``autoprune export RUN_DIR --format torch|onnx``: the pruned model as a standalone file
(see :mod:`autoprune.pipeline.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprune.pipeline.export import FORMATS, export_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's pruned model (torch.export .pt2 or ONNX)")
    p.add_argument("run_dir", help="a finished run directory (holds pruned_model.pt)")
    p.add_argument("--format", choices=sorted(FORMATS), default="torch", help="output format")
    p.add_argument("--out", help="output file (default RUN_DIR/pruned_model.<pt2|onnx>)")
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm layers into the convs before them")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / f"pruned_model.{FORMATS[args.format]}"
    path = export_run(run_dir, args.format, out, fold_bn=args.fold_bn)
    print(f"wrote {path}")
    return 0
