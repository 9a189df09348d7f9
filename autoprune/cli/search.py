"""``autoprune search`` and ``autoprune train``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from autoprune.config import ExperimentConfig, load_config, parse_override, read_yaml
from autoprune.errors import AutopruneError


def add_config_args(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("config", nargs=None if config_required else "?", help="experiment YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set searcher.episodes=30 (repeatable)")
    p.add_argument("--seed", type=int, help="override the seed")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None,
                     budget: str | None = None) -> ExperimentConfig:
    overrides = list(extra or []) + list(args.overrides)  # --set wins over --searcher's reset
    if getattr(args, "seed", None) is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(args.config, overrides, budget)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search per-layer pruning ratios, prune, fine-tune, test")
    add_config_args(p, config_required=False)
    p.add_argument("--searcher", help="searcher name (overrides searcher.name)")
    p.add_argument("--budget", help="budget short form, e.g. flops=0.5, params=0.3, latency=0.6")
    p.add_argument("--out", help="run directory (default runs/<name>__<searcher>__<seed>__<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search in RUN_DIR")
    p.add_argument("--workers", metavar="N|auto",
                   help="evaluate on N Ray actors (auto: one per core; 0: in-process); default: ray.workers "
                        "of the config (0)")
    p.set_defaults(func=cmd_search)

    t = sub.add_parser("train", help="train a base model and save its state_dict")
    add_config_args(t)
    t.add_argument("--out", required=True, help="where to write the state_dict (.pt)")
    t.set_defaults(func=cmd_train)


def cmd_search(args: argparse.Namespace) -> int:
    from autoprune.pipeline.artifacts import read_summary
    from autoprune.pipeline.run import run_search
    from autoprune.search.base import SEARCHERS

    if args.config is None and not args.resume:
        raise AutopruneError("give an experiment CONFIG (e.g. experiments/quickstart.yaml) or --resume RUN_DIR")
    extra = [f"searcher.name={args.searcher}"] if args.searcher else []
    note = ""
    if args.config is None:
        args.config = str(Path(args.resume) / "config.yaml")
        if not Path(args.config).is_file():
            raise AutopruneError(f"--resume {args.resume!r}: not a run directory (no config.yaml)")
    elif args.searcher:  # another searcher: keep the options that still apply (switch_searcher)
        extra, note = switched_searcher(read_yaml(args.config).get("searcher"), args.searcher, args.overrides)
    if args.workers is not None:
        workers = (os.cpu_count() or 1) if args.workers == "auto" else args.workers
        extra.append(f"ray.workers={workers}")
    cfg = config_from_args(args, extra, args.budget)
    if note:  # once the new searcher's options are known to be valid: a refused config prints one line
        SEARCHERS.get(cfg.searcher_name).parse_options(cfg.searcher)
        print(f"autoprune: --searcher {args.searcher}: {note}", file=sys.stderr)
    run_dir = run_search(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    print_summary(read_summary(run_dir), run_dir)
    return 0


def switched_searcher(section: object, name: str, overrides: list[str]) -> tuple[list[str], str]:
    """``--searcher NAME`` on a config written for another searcher: the ``--set`` override that
    replaces its ``searcher:`` section, and the note on what was kept and dropped ("" for none)."""
    from autoprune.search.base import switch_searcher

    paths = [parse_override(text)[0] for text in overrides]
    given = [p[1] for p in paths if len(p) == 2 and p[0] == "searcher"]
    new, note = switch_searcher(section, name, given)
    if not note or ["searcher"] in paths or ["searcher", "name"] in paths:  # --set replaces what we did
        note = ""
    flow = yaml.safe_dump(new, default_flow_style=True, width=float("inf")).strip()
    return [f"searcher={flow}"], note


def rounding_note(s: dict) -> str:
    """What the budget line adds when ``pruning.round_to: auto`` chose a coarser rounding for a LUT budget."""
    r = s.get("round_to") or {}
    kept = r.get("flops_kept") or {}
    if not r.get("auto") or r.get("value", 1) == 1:
        return ""
    at_one = f"{kept['1']:.2f} at 1" if "1" in kept else "none reach it at 1"
    return (f" (pruning.round_to auto: {r['value']}; random plans fitted to it keep {kept[str(r['value'])]:.2f} of "
            f"the FLOPs there, {at_one})")


def print_summary(s: dict, run_dir: Path) -> None:
    b, p = s["base"], s["pruned"]
    nonzero = ", non-zero" if "dense_params" in p else ""  # fine / N:M: zeros are stored but not counted
    lines = [
        *timing_lines(s),
        f"budget   {s['budget']['kind']} <= {s['budget']['fraction']:.3g} of the base{rounding_note(s)}",
        f"FLOPs    {b['flops']:,} -> {p['flops']:,} ({p['flops_kept']:.1%} kept{nonzero})",
        f"params   {b['params']:,} -> {p['params']:,} ({p['params_kept']:.1%} kept{nonzero})",
        f"val acc  base {b['val_accuracy']:.4f}, pruned before fine-tune {p['val_accuracy_before_finetune']:.4f}",
        f"test acc base {b['test_accuracy']:.4f}, pruned {p['test_accuracy_before_finetune']:.4f}"
        f" -> {p['test_accuracy_after_finetune']:.4f} after fine-tune",
        f"run dir  {run_dir}",
    ]
    lat = s.get("latency") or {}
    if lat.get("base_measured_ms") and lat.get("pruned_measured_ms"):
        lines.insert(len(lines) - 3,  # before the accuracies
                     f"latency  {lat['base_measured_ms']:.3g} -> {lat['pruned_measured_ms']:.3g} ms measured "
                     f"({lat.get('kept_measured', lat['pruned_measured_ms'] / lat['base_measured_ms']):.3f} of the "
                     f"base, timed against it; predicted {lat.get('kept_predicted', float('nan')):.3f})")
    v = s.get("verify")
    if v:  # budget.verify: where the searched plan ran and what was made of it
        first, fits = v["rounds"][0], len(v["rounds"]) - 1
        done = (f"fitted in {fits} round{'' if fits == 1 else 's'} to {v['measured']:.3f}" if v["changed"]
                else "kept: no plan of the ratio range meets the budget at the level measured on it"
                if v.get("stopped") == "unreachable" else "kept as searched")
        lines.insert(len(lines) - 3, f"verify   the searched plan ran at {first['measured']:.3f} of the base (LUT "
                                     f"{first['predicted']:.3f}, budget {v['target']:.3f}); {done}"
                                     f"{'' if v['met'] else ', not within the tolerance'}")
    print("\n".join(lines), file=sys.stdout)


def timing_lines(s: dict) -> list[str]:
    """The summary's first lines: evaluations, their scoring time, and where the run's time went
    (``timing`` in summary.json: every segment of the run, resumes included)."""
    n = s["evaluations"]
    head = f"searcher {s['searcher']}: {n} evaluation{'' if n == 1 else 's'}"
    t = s.get("timing")
    if not t:  # a summary.json written before the timing block
        return [f"{head} in a {s['wall_seconds']:.1f} s run"]
    cached = f"{t['cached_evaluations']} cached; " if t.get("cached_evaluations") else ""
    lines = [f"{head} ({cached}{t['evaluation_seconds']:.1f} s of scoring) in a {t['run_seconds']:.1f} s run"]
    setup = f"setup {t['setup_seconds']:.1f} s"
    if t["base_training_seconds"]:
        setup += f" (base-model training {t['base_training_seconds']:.1f} s)"
    parts = [setup, f"search {t['search_seconds']:.1f} s", f"fine-tune {t['finetune_seconds']:.1f} s",
             f"tests {t['test_seconds']:.1f} s", f"other {t['other_seconds']:.1f} s"]
    resumes = sum(1 for seg in t.get("segments", []) if seg.get("kind") == "resume")
    if resumes:
        parts[-1] += f"; over {resumes + 1} segments (the start and {resumes} resume{'' if resumes == 1 else 's'})"
    lines.append("time     " + ", ".join(parts))
    return lines


def cmd_train(args: argparse.Namespace) -> int:
    from autoprune.pipeline.session import train_base_model

    cfg = config_from_args(args)
    _model, test_accuracy = train_base_model(cfg, args.out, progress=not args.no_progress)
    print(f"saved {Path(args.out)} (test accuracy {test_accuracy:.4f})")
    return 0
