"""``autoprune submit``, ``jobs``, ``logs``, ``stop``, ``fetch``: searches as Ray Jobs on a cluster
(see :mod:`autoprune.pipeline.jobs`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from autoprune.errors import AutopruneError

ADDRESS_HELP = "the Ray head's dashboard, http://HEAD:8265 (default: RAY_ADDRESS, then http://127.0.0.1:8265)"


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help=ADDRESS_HELP)


def _quiet_ray(args: argparse.Namespace) -> None:
    """Ray's client logs each upload and websocket at INFO: shown with -v only."""
    import ray.job_submission  # noqa: F401  (importing ray sets its loggers' levels: set ours after)

    if not getattr(args, "verbose", False):
        for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a search (or an `autoprune run` experiment) to a Ray cluster")
    p.add_argument("config", nargs="?", help="experiment YAML (its checkpoint and LUT files are sent with it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--budget", help="budget short form, e.g. flops=0.5")
    p.add_argument("--storage", help="shared storage for run dirs: a directory every node mounts, or a URI "
                                     "(s3://...); default AUTOPRUNE_STORAGE, then ~/.autoprune/storage for a "
                                     "Ray on this machine")
    p.add_argument("--kind", choices=("search", "run"),
                   help="search, or run (every searcher x budget x seed); default: run when the config lists "
                        "searchers, budgets or seeds")
    p.add_argument("--resume", metavar="JOB", help="resubmit a stopped or failed job: continue its run dir")
    _address(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list the submitted jobs with their state and progress")
    _address(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("logs", help="print a job's log")
    p.add_argument("job", help="job id (see autoprune jobs)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="follow until the job ends; exit 0 if it succeeded, 1 otherwise")
    _address(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a job (resubmit it with autoprune submit --resume JOB)")
    p.add_argument("job", help="job id")
    _address(p)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("fetch", help="copy a finished job's run dir here")
    p.add_argument("job", help="job id")
    p.add_argument("--out", default="runs", help="directory to copy the run dir into (default runs)")
    _address(p)
    p.set_defaults(func=cmd_fetch)


def cmd_submit(args: argparse.Namespace) -> int:
    from autoprune.pipeline import jobs

    _quiet_ray(args)

    if args.resume:
        if args.config or args.overrides or args.budget or args.storage or args.kind:
            raise AutopruneError("--resume JOB takes no config or options but --address: the job's own are used")
        job = jobs.resubmit(args.resume, address=args.address)
    elif not args.config:
        raise AutopruneError("give an experiment CONFIG to submit, or --resume JOB")
    else:
        job = jobs.submit(args.config, args.overrides, address=args.address, storage=args.storage,
                          kind=args.kind, budget=args.budget)
    print(f"submitted job {job}")
    print(f"  follow it:  autoprune logs {job} --follow")
    print(f"  results:    autoprune fetch {job}")
    return 0


def _fmt_progress(row) -> str:
    done = "?" if row.done is None else str(row.done)
    return f"{done}/{row.planned if row.planned else '?'}"


def cmd_jobs(args: argparse.Namespace) -> int:
    from autoprune.pipeline import jobs

    _quiet_ray(args)

    rows = jobs.list_jobs(address=args.address)
    if not rows:
        print("no autoprune jobs on this cluster")
        return 0
    table = [("JOB", "STATUS", "KIND", "EVALS", "BEST", "SUBMITTED")]
    for r in rows:
        submitted = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.submitted)) if r.submitted else "-"
        table.append((r.job, r.status, r.kind, _fmt_progress(r), "-" if r.best is None else f"{r.best:.4f}",
                      submitted))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r.message:
            print(f"{r.job}: {r.message}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from autoprune.pipeline import jobs

    _quiet_ray(args)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    status = jobs.logs(args.job, address=args.address, follow=args.follow, write=write)
    if args.follow:
        print(f"job {args.job}: {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else 1
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from autoprune.pipeline import jobs

    _quiet_ray(args)

    status = jobs.stop(args.job, address=args.address)
    if status in jobs.ACTIVE:
        print(f"stopping job {args.job}; finished evaluations are kept: resubmit with "
              f"autoprune submit --resume {args.job}")
    else:
        print(f"job {args.job} is not running ({status})")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from autoprune.pipeline import jobs

    _quiet_ray(args)

    run_dir = jobs.fetch(args.job, args.out, address=args.address)
    print(f"fetched {run_dir}")
    return 0
