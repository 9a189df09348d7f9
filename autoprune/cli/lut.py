"""``autoprune lut build`` and ``autoprune lut check``: per-device latency lookup tables
(see :mod:`autoprune.pipeline.lut`).

Timing runs in this process, on ``--threads`` threads (1 by default: on a small CPU two threads
do not repeat within 10%). For multi-threaded tables start the command with
``OMP_WAIT_POLICY=ACTIVE`` in the environment (read when torch is imported). The allocator is
tuned in-process (see :func:`autoprune.latency.timing.tune_allocator`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autoprune.errors import AutopruneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lut", help="build or check a per-device latency lookup table (LUT)")
    lut_sub = p.add_subparsers(dest="lut_command", metavar="{build,check}")
    lut_sub.required = True

    b = lut_sub.add_parser("build", help="profile a model's layers over a channel grid and write a LUT")
    _model_args(b)
    b.add_argument("--input-shape", required=True, help="one sample's shape, C,H,W (e.g. 3,32,32)")
    b.add_argument("--batch", type=int, default=1, help="batch size to time (default 1)")
    b.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    b.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: end-to-end latency (default); cpu: the timing thread's CPU time "
                        "(1 thread; for busy machines)")
    b.add_argument("--device-name", help="name stored in the header (default: the CPU's model name)")
    b.add_argument("--step", type=int, default=8, help="grid spacing in channels; 1 = every count (default 8)")
    b.add_argument("--repeats", type=int, default=15, help="timed samples per measurement (default 15)")
    b.add_argument("--calibration-plans", type=int, default=12,
                   help="random pruned variants timed to calibrate the prediction (default 12; 0 = sum + remainder)")
    b.add_argument("--seed", type=int, default=0, help="seed of the calibration plans")
    b.add_argument("--out", required=True, help="where to write the LUT (JSON)")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    b.set_defaults(func=cmd_build)

    c = lut_sub.add_parser("check", help="time random pruned plans and compare with the LUT's predictions")
    c.add_argument("--lut", required=True, help="the LUT (JSON)")
    _model_args(c)
    c.add_argument("--plans", type=int, default=50, help="random plans to time (default 50)")
    c.add_argument("--repeats", type=int, default=15, help="timed samples per plan (default 15)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random plans")
    c.add_argument("--json", dest="json_out", help='write {"plans", "mape", "within_10pct", ...} here')
    c.add_argument("--plot", help="scatter plot PNG (default: next to --json, else <lut>.check.png)")
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    c.set_defaults(func=cmd_check)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="built-in model name or a pkg.module:function factory")
    p.add_argument("--model-kwargs", default="{}", help='JSON keyword arguments for the model, e.g. \'{"width": 8}\'')
    p.add_argument("--num-classes", type=int, default=10, help="classes of a built-in model (default 10)")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in str(text).replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise AutopruneError(f"--input-shape must be C,H,W with positive integers (got {text!r})")
    return shape


def model_kwargs(args: argparse.Namespace) -> dict:
    """``--model-kwargs`` as a dict."""
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        raise AutopruneError(f"--model-kwargs is not valid JSON ({exc.msg})") from exc
    if not isinstance(kwargs, dict):
        raise AutopruneError("--model-kwargs must be a JSON object")
    return kwargs


def cmd_build(args: argparse.Namespace) -> int:
    from autoprune.pipeline.lut import build_lut_file

    shape = parse_shape(args.input_shape)
    for name in ("batch", "threads", "step", "repeats"):
        if getattr(args, name) < 1:
            raise AutopruneError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if args.calibration_plans < 0:
        raise AutopruneError("--calibration-plans must be >= 0")
    lut = build_lut_file(args.model, shape, args.out, model_kwargs(args), args.num_classes, batch=args.batch,
                         threads=args.threads, step=args.step, device=args.device_name, repeats=args.repeats,
                         calibration_plans=args.calibration_plans, seed=args.seed, progress=not args.no_progress,
                         clock=args.clock)
    h = lut.header
    cal = h.get("calibration")
    print(f"wrote {Path(args.out)}: {len(lut.tables)} module tables, base {h['base_measured_ms']:.3f} ms measured "
          f"(batch {h['batch']}, {h['threads']} thread(s), {h['device']}) in {h['build_seconds']:.1f} s"
          + (f"; calibration scale {cal['scale']:.3f}, offset {cal['offset_ms']:.3f} ms" if cal else ""))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from autoprune.pipeline.lut import check_lut_file

    r = check_lut_file(args.lut, args.model, model_kwargs(args), args.num_classes, plot=args.plot,
                       json_out=args.json_out, plans=args.plans, seed=args.seed, repeats=args.repeats,
                       progress=not args.no_progress)
    print(f"{r['plans']} plans: mean abs error {r['mape']:.2f}%, {r['within_10pct']:.0%} within +-10%, "
          f"worst {r['max_abs_pct']:.1f}%; plot {r['plot']}", file=sys.stdout)
    print(f"the base model runs at {r['drift']:.0%} of its build-time latency ({r['base_ms_now']:.3f} vs "
          f"{r['base_ms_at_build']:.3f} ms); at the build-time speed: mean abs error "
          f"{r['mape_drift_corrected']:.2f}%, {r['within_10pct_drift_corrected']:.0%} within +-10%", file=sys.stdout)
    if abs(r["drift"] - 1) > 0.05:
        print("note: the machine's speed moved more than 5% since the LUT was built; fractional latency budgets "
              "only use relative predictions, absolute (ms) budgets need a rebuilt LUT", file=sys.stdout)
    return 0
