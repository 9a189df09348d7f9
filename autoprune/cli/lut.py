"""``autoprune lut build|check|reanchor|probes|import|list``: per-device latency lookup tables
(see :mod:`autoprune.pipeline.lut`).

Timing runs in this process, on ``--threads`` threads (1 by default: on a small CPU two threads
do not repeat within 10%), in ``--runtime`` (``torch`` eager, ``onnxruntime`` or ``openvino``). For
multi-threaded torch tables start the command with ``OMP_WAIT_POLICY=ACTIVE`` in the environment
(read when torch is imported). The allocator is tuned in-process (see
:func:`autoprune.latency.timing.tune_allocator`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autoprune.errors import AutopruneError

RUNTIME_HELP = ("runtime to time in: torch (eager, default), onnxruntime or openvino (CPU; both run the model "
                "exported to ONNX)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lut", help="build, check, import or list per-device latency lookup tables (LUTs)")
    lut_sub = p.add_subparsers(dest="lut_command", metavar="{build,check,reanchor,probes,import,list}")
    lut_sub.required = True

    b = lut_sub.add_parser("build", help="profile a model's layers over a channel grid and write a LUT")
    add_model_args(b)
    _shape_args(b)
    b.add_argument("--runtime", default="torch", help=RUNTIME_HELP)
    b.add_argument("--threads", type=int, default=1, help="intra-op threads while timing (default 1)")
    b.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="auto (default): cpu at 1 thread on the CPU, else wall; wall: end-to-end latency; "
                        "cpu: the timing thread's CPU time (1 thread; what a busy machine cannot inflate)")
    b.add_argument("--device-name", help="name stored in the header (default: the CPU's model name)")
    b.add_argument("--repeats", type=int, default=15, help="timed samples per measurement (default 15)")
    b.add_argument("--out", required=True, help="where to write the LUT (JSON)")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    b.set_defaults(func=cmd_build)

    c = lut_sub.add_parser("check", help="time random pruned plans and compare with the LUT's predictions")
    c.add_argument("--lut", required=True, help="the LUT (JSON)")
    add_model_args(c)
    c.add_argument("--runtime", help="runtime to time in (default and only choice: the LUT's)")
    c.add_argument("--plans", type=int, default=50, help="random plans to time (default 50)")
    c.add_argument("--repeats", type=int, default=15, help="timed samples per plan (default 15)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random plans")
    c.add_argument("--round-to", type=int, default=1,
                   help="round the plans' channel counts to multiples of this, as a search with pruning.round_to "
                        "does (default 1: any count)")
    c.add_argument("--timings", type=int, default=1,
                   help="time the plans this many times (one after another) and report how often two timings of a "
                        "plan agree within +-10%%: what this machine lets any LUT score (default 1)")
    c.add_argument("--reanchor", type=int, default=0, metavar="N",
                   help="also time N other random plans alongside and score the LUT re-anchored on them "
                        "(what lut reanchor would make of it now; default 0: no)")
    c.add_argument("--json", dest="json_out", help='write {"plans", "mape", "within_10pct", ...} here')
    c.add_argument("--plot", help="scatter plot PNG (default: next to --json, else <lut>.check.png)")
    c.add_argument("--no-record", action="store_true", help="do not record the result in the LUT's header")
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    c.set_defaults(func=cmd_check)

    ra = lut_sub.add_parser("reanchor", help="re-measure a LUT's level on this machine as it is now (a few plans)")
    ra.add_argument("--lut", required=True, help="the LUT (JSON), updated in place")
    add_model_args(ra)
    ra.add_argument("--plans", type=int, default=8, help="random plans to time (default 8)")
    ra.add_argument("--round-to", type=int, default=1,
                    help="draw the plans as a search with pruning.round_to does (default 1)")
    ra.add_argument("--repeats", type=int, default=15, help="timed samples per plan (default 15)")
    ra.add_argument("--seed", type=int, default=0, help="seed of the random plans")
    ra.add_argument("--near", type=float, default=None, metavar="FRACTION",
                    help="draw the plans where a search under this latency budget ends (e.g. 0.5 for latency: 0.5), "
                         "not over the whole range: the level that matters there (default: the whole range)")
    ra.add_argument("--clear", action="store_true", help="remove the stored level (the LUT as built again); times nothing")
    ra.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ra.set_defaults(func=cmd_reanchor)

    pr = lut_sub.add_parser("probes", help="write probe models + a standalone timing script for another device")
    add_model_args(pr)
    _shape_args(pr)
    pr.add_argument("--out", required=True, help="directory to write the probes, manifest.json and time_probes.py to")
    pr.set_defaults(func=cmd_probes)

    i = lut_sub.add_parser("import", help="turn a probe directory's timings.json into a LUT")
    i.add_argument("dir", help="the directory autoprune lut probes wrote (with timings.json from the device)")
    i.add_argument("--out", required=True, help="where to write the LUT (JSON)")
    i.add_argument("--device-name", help="device name for the header (default: the one in timings.json)")
    i.set_defaults(func=cmd_import)

    ls = lut_sub.add_parser("list", help="list the LUTs in a directory (device, runtime, model, accuracy)")
    ls.add_argument("--dir", help="the LUT directory (default: $AUTOPRUNE_LUT_DIR)")
    ls.set_defaults(func=cmd_list)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="built-in model name or a pkg.module:function factory")
    p.add_argument("--model-kwargs", default="{}", help='JSON keyword arguments for the model, e.g. \'{"width": 8}\'')
    p.add_argument("--num-classes", type=int, default=10, help="classes of a built-in model (default 10)")


def _shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", required=True, help="one sample's shape: C,H,W (e.g. 3,32,32), C,L for 1-d signals, "
                   "F for feature vectors")
    p.add_argument("--batch", type=int, default=1, help="batch size to time (default 1)")
    p.add_argument("--step", type=int, default=8, help="grid spacing in channels; 1 = every count (default 8)")
    p.add_argument("--calibration-plans", type=int, default=12,
                   help="random pruned variants timed to calibrate the prediction, plus one near-full "
                        "variant per four (default 12, +3; 0 = sum + remainder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration plans")
    p.add_argument("--fine", action=argparse.BooleanOptionalAction, default=None,
                   help="time each axis at every width too (the fine curves): needed where kernels favour "
                        "multiples of 4 or 16 (default: on for onnxruntime, openvino and CUDA, off for torch on the CPU)")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in str(text).replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise AutopruneError(f"--input-shape must be one sample's shape, positive integers such as C,H,W "
                             f"(got {text!r})")
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


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise AutopruneError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if getattr(args, "calibration_plans", 0) < 0:
        raise AutopruneError("--calibration-plans must be >= 0")


def cmd_build(args: argparse.Namespace) -> int:
    from autoprune.latency.runtimes import get_runtime
    from autoprune.pipeline.lut import build_lut_file, calibration_summary, calibration_warning

    shape = parse_shape(args.input_shape)
    _positive(args, "batch", "threads", "step", "repeats")
    get_runtime(args.runtime)
    lut = build_lut_file(args.model, shape, args.out, model_kwargs(args), args.num_classes, batch=args.batch,
                         threads=args.threads, step=args.step, device=args.device_name, repeats=args.repeats,
                         calibration_plans=args.calibration_plans, seed=args.seed, progress=not args.no_progress,
                         clock=args.clock, runtime=args.runtime, fine=args.fine)
    h = lut.header
    print(f"wrote {Path(args.out)}: {len(lut.tables)} module tables, {h['runtime']} {h['runtime_version']}, "
          f"base {h['base_measured_ms']:.3f} ms = {h['base_reference']:.2f} x the reference op "
          f"(batch {h['batch']}, {h['threads']} thread(s), {h['device']}) in {h['build_seconds']:.1f} s"
          + calibration_summary(h))
    if warning := calibration_warning(h):
        print(warning, file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from autoprune.pipeline.lut import PASS_SHIFT_WARN, check_lut_file

    _positive(args, "plans", "repeats", "round_to", "timings")
    if args.reanchor < 0:
        raise AutopruneError(f"--reanchor must be >= 0 (got {args.reanchor})")
    r = check_lut_file(args.lut, args.model, model_kwargs(args), args.num_classes, plot=args.plot,
                       json_out=args.json_out, record=not args.no_record, plans=args.plans, seed=args.seed,
                       repeats=args.repeats, progress=not args.no_progress, runtime=args.runtime,
                       round_to=args.round_to, timings=args.timings, reanchor=args.reanchor)
    rounded = f", counts rounded to {args.round_to}" if args.round_to > 1 else ""
    print(f"{r['plans']} plans ({r['runtime']}{rounded}), latency as a fraction of the unpruned model: mean abs error "
          f"{r['mape']:.2f}%, {r['within_10pct']:.0%} within +-10%, worst {r['max_abs_pct']:.1f}%; plot {r['plot']}")
    print(f"in ms: mean abs error {r['mape_ms']:.2f}%, {r['within_10pct_ms']:.0%} within +-10%; the unpruned model "
          f"runs at {r['drift']:.0%} of its build-time latency ({r['base_ms_now']:.3f} vs {r['base_ms_at_build']:.3f} ms)")
    if abs(r.get("offset_pct", 0.0)) > 5 and r.get("within_10pct_offset_removed", 0.0) >= r["within_10pct"] + 0.10:
        print(f"note: the predictions sit {r['offset_pct']:+.1f}% off the measurements as a whole, and with that common "
              f"offset divided out {r['within_10pct_offset_removed']:.0%} are within +-10%: the LUT's shape holds, its "
              "level is the machine's state at the build; lut check --reanchor 8 shows what re-anchoring would do, "
              "lut reanchor stores it (docs/latency.md)")
    if r.get("level", 1.0) != 1.0:
        print(f"the LUT carries a level of x{r['level']:.3f} (lut reanchor; lut reanchor --clear removes it)")
    if "level_now" in r:
        print(f"re-anchored on {args.reanchor} other plans timed alongside (level x{r['level_now']:.3f}, the LUT's "
              f"x{r['level']:.3f}): mean abs error {r['mape_reanchored']:.2f}%, {r['within_10pct_reanchored']:.0%} "
              "within +-10% (autoprune lut reanchor stores such a level in the LUT)")
    if r.get("repeatability") is not None:
        each = ", ".join(f"{w:.0%}" for w in r["within_10pct_each"])
        print(f"{r['timings']} timings: a plan's fractions in two of them agree within +-10% for "
              f"{r['repeatability']:.0%} (the machine's repeatability); the LUT against each timing alone: {each}")
        if r["repeatability"] < 0.95:
            print("note: this machine does not repeat its own timings of these plans within +-10%: no LUT can be "
                  "checked (or trusted) here more closely than that; build and check on a quieter machine")
    if abs(r["drift"] - 1) > 0.05:
        print("note: the machine's speed moved more than 5% since the LUT was built: ms predictions (latency_ms "
              "budgets) are off by that much; fractions (latency budgets) are not, unless the load changed what is "
              "slow (see docs/latency.md)")
    if r.get("pass_shift", 0.0) > PASS_SHIFT_WARN:
        print(f"note: this check's timing passes moved every plan's fraction together by up to {r['pass_shift']:.0%} "
              "(the machine's load changed while it timed): its accuracy figures carry that much noise; check again "
              "on a quieter machine")
    if args.round_to == 1 and r["within_10pct"] < 0.95 and r["runtime"] == "onnxruntime":  # measured there only
        print(f"note: in {r['runtime']} the fractions of plans whose channel counts are off multiples of 16 move with "
              "the machine's load; a search with pruning.round_to: 16 makes plans that hold while the load is the build's: "
              "check those with --round-to 16 (docs/latency.md)")
    if not r.get("timed_here", r["device_now"] == r["device"]):
        print(f"note: the LUT is for {r['device']!r}; this machine is {r['device_now']!r}")
    return 0


def cmd_reanchor(args: argparse.Namespace) -> int:
    from autoprune.pipeline.lut import reanchor_lut_file

    _positive(args, "plans", "repeats", "round_to")
    if args.clear:
        from autoprune.pipeline.lut import clear_level

        previous = clear_level(args.lut)
        print(f"{args.lut}: level removed (was x{previous:.3f}); plans are priced as built")
        return 0
    r = reanchor_lut_file(args.lut, args.model, model_kwargs(args), args.num_classes, plans=args.plans,
                          seed=args.seed, round_to=args.round_to, repeats=args.repeats, progress=not args.no_progress,
                          near=args.near)
    where = "" if args.near is None else f" near {args.near:g} of the unpruned model"
    print(f"{args.lut}: level x{r['level']:.3f} (was x{r['previous']:.3f}): {args.plans} plans{where} measured at "
          f"{r['level']:.3f} times the LUT's fractions as built; every pruned plan is priced at that multiple "
          "from now on (lut check to see how it does)")
    return 0


def cmd_probes(args: argparse.Namespace) -> int:
    from autoprune.pipeline.lut import probes_dir

    shape = parse_shape(args.input_shape)
    _positive(args, "batch", "step")
    m = probes_dir(args.model, shape, args.out, model_kwargs(args), args.num_classes, batch=args.batch,
                   step=args.step, calibration_plans=args.calibration_plans, seed=args.seed, fine=args.fine is not False)
    print(f"wrote {len(m['probes'])} layer probes, the reference probe, the model and {len(m['calibration'])} "
          f"calibration plans to {args.out}; on the device run: python time_probes.py (numpy + onnxruntime, or "
          f"--runtime openvino), "
          f"copy timings.json back, then: autoprune lut import {args.out} --out LUT.json")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from autoprune.pipeline.lut import calibration_summary, calibration_warning, import_lut_file

    lut = import_lut_file(args.dir, args.out, args.device_name)
    h = lut.header
    print(f"wrote {args.out}: {len(lut.tables)} module tables for {h['device']!r} ({h['runtime']} "
          f"{h['runtime_version']}, batch {h['batch']}, {h['threads']} thread(s))"
          + calibration_summary(h))
    if warning := calibration_warning(h):
        print(warning, file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from autoprune.pipeline.lut import list_lut_dir

    folder, entries = list_lut_dir(args.dir)
    if not entries:
        print(f"no LUTs in {folder}")
        return 0
    rows = [e.row() for e in entries]
    cols = ["device", "runtime", "model", "signature", "batch", "threads", "created", "accuracy", "file"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
    return 0
