"""Comparing runs: a table of finished run dirs, ``report.md``, ``results.csv`` and PNG plots.

A run dir is any directory holding ``summary.json`` (written by ``autoprune search`` and by each
trial of ``autoprune run``); its ``trials.parquet`` and ``best_plan.json`` feed the plots.
Plots that need a searcher the runs do not contain (DDPG rewards, NetAdapt's trajectory) are
skipped with a note in the report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from autoprune.atomic import atomic_write_text, atomic_write_with, read_json, read_trials  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.pipeline.efficiency import KEYS, sample_efficiency, search_trials  # noqa: E402

log = logging.getLogger(__name__)

METRICS = ["flops_kept", "params_kept", "latency_kept", "val_acc_before_ft", "test_acc_after_ft",
           "evaluations", "wall_s"]


# ------------------------------------------------------------------------------------ loading


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run dirs (holding ``summary.json``) given directly or found below the given paths."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise AutopruneError(f"{str(path)!r} is not a directory; give run dirs or their parent")
        if (path / "summary.json").is_file():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.rglob("summary.json")))
    if not found:
        raise AutopruneError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}")
    return sorted(dict.fromkeys(p.resolve() for p in found))


def _budget_label(summary: dict[str, Any]) -> str:
    """``kind=fraction``, with `` round_to N`` where the run rounded its counts to N > 1 (``pruning.round_to``, or
    what ``auto`` chose): plans from another space, compared apart."""
    budget = summary.get("budget", {})
    label = f"{budget.get('kind')}={float(budget.get('fraction', float('nan'))):.3g}"
    round_to = (summary.get("round_to") or {}).get("value", 1)
    return f"{label} round_to {round_to}" if round_to != 1 else label


def searcher_label(run_dir: Path, name: str | None) -> str | None:
    """The searcher's name, with its ``preset`` when the run's config chose one other than the
    default (``ddpg:amc``), so that presets of one searcher are compared side by side."""
    path = run_dir / "config.yaml"
    if name is None or not path.is_file():
        return name
    import yaml

    try:
        searcher = (yaml.safe_load(path.read_text()) or {}).get("searcher") or {}
    except yaml.YAMLError:
        return name
    preset = searcher.get("preset") if isinstance(searcher, dict) else None
    return f"{name}:{preset}" if preset and preset != "autoprune" else name


def run_row(run_dir: Path) -> dict[str, Any]:
    """One row of the table from a run dir's ``summary.json``."""
    s = read_json(run_dir / "summary.json")
    pruned = s.get("pruned", {})
    latency = s.get("latency") or {}
    return {
        "run": run_dir.name, "path": str(run_dir), "searcher": searcher_label(run_dir, s.get("searcher")),
        "budget": _budget_label(s), "seed": s.get("seed"),
        "flops_kept": pruned.get("flops_kept"), "params_kept": pruned.get("params_kept"),
        "latency_kept": latency.get("kept_measured", latency.get("kept_predicted", np.nan)),
        "val_acc_before_ft": pruned.get("val_accuracy_before_finetune"),
        "test_acc_after_ft": pruned.get("test_accuracy_after_finetune"),
        "evaluations": s.get("evaluations"), "wall_s": s.get("wall_seconds"),
    }


def load_runs(run_dirs: list[Path]) -> pd.DataFrame:
    """The per-run table, sorted by searcher, budget and seed."""
    df = pd.DataFrame([run_row(d) for d in run_dirs])
    return df.sort_values(["searcher", "budget", "seed"], kind="stable").reset_index(drop=True)


def load_trials(run_dirs: list[Path]) -> pd.DataFrame:
    """All ``trials.parquet`` rows, with ``run``, ``budget`` and ``seed`` columns added."""
    frames = []
    for d in run_dirs:
        t = read_trials(d / "trials.parquet")
        if len(t):
            s = read_json(d / "summary.json")
            label = searcher_label(d, s.get("searcher"))
            names = t["searcher"] if "searcher" in t else pd.Series(s.get("searcher"), index=t.index)
            frames.append(t.assign(run=d.name, budget=_budget_label(s), seed=s.get("seed"),
                                   searcher=names.where(names != s.get("searcher"), label)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (searcher, budget): columns ``<metric>_mean``, ``<metric>_std``."""
    grouped = runs.groupby(KEYS, sort=True)[METRICS]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=0).add_suffix("_std"))
    out["seeds"] = runs.groupby(KEYS, sort=True)["seed"].count()
    return out.reset_index()


# ------------------------------------------------------------------------------------- tables


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def mean_std_table(agg: pd.DataFrame) -> pd.DataFrame:
    """``mean ± std`` strings per metric (what the CLI prints and report.md shows)."""
    out = agg[KEYS + ["seeds"]].copy()
    for m in METRICS:
        digits = 1 if m in ("evaluations", "wall_s") else 4
        out[m] = [f"{_fmt(a, digits)} ± {_fmt(b, digits)}" if not pd.isna(a) else "-"
                  for a, b in zip(agg[f"{m}_mean"], agg[f"{m}_std"], strict=True)]
    return out


def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def text_table(df: pd.DataFrame) -> str:
    cells = [list(map(str, df.columns))] + [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


# -------------------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write_with(path, lambda buf: fig.savefig(buf, format="png", dpi=110))
    plt.close(fig)


def _colors(searchers: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i % 10) for i, s in enumerate(sorted(searchers))}


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points not dominated (no other point has lower-or-equal cost and higher accuracy)."""
    order = np.lexsort((-acc, cost))
    xs, ys, best = [], [], -np.inf
    for i in order:
        if acc[i] > best:
            xs.append(cost[i])
            ys.append(acc[i])
            best = acc[i]
    return np.asarray(xs), np.asarray(ys)


def plot_accuracy_vs_cost(trials: pd.DataFrame, path: Path) -> bool:
    kind = next((k for k in ("flops_kept", "latency_kept", "params_kept") if k in trials), None)
    if kind is None or "val_accuracy" not in trials:
        return False
    colors = _colors(trials["searcher"].unique().tolist())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, t in trials.groupby("searcher"):
        t = t.dropna(subset=[kind, "val_accuracy"])
        ax.scatter(t[kind], t["val_accuracy"], s=12, alpha=0.35, color=colors[name])
        xs, ys = pareto_front(t[kind].to_numpy(float), t["val_accuracy"].to_numpy(float))
        ax.step(xs, ys, where="post", color=colors[name], lw=2, marker="o", ms=4, label=f"{name} (Pareto front)")
    ax.set(xlabel=f"{kind.replace('_', ' ')} (fraction of the base)", ylabel="val accuracy (adaptive BN)",
           title="Accuracy vs cost of every evaluated plan")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_preserve_ratios(runs: pd.DataFrame, path: Path) -> bool:
    ratios: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _, row in runs.iterrows():
        plan_file = Path(row["path"]) / "best_plan.json"
        if plan_file.is_file():
            ratios.setdefault((row["searcher"], row["budget"]), []).append(json.loads(plan_file.read_text())["ratios"])
    if not ratios:
        return False
    budgets = sorted({b for _, b in ratios})
    searchers = sorted({s for s, _ in ratios})
    colors = _colors(searchers)
    fig, axes = plt.subplots(len(budgets), 1, figsize=(max(7, 0.5 * _n_units(ratios) + 3), 3.2 * len(budgets)),
                             squeeze=False)
    width = 0.8 / len(searchers)
    for ax, budget in zip(axes[:, 0], budgets, strict=True):
        for k, name in enumerate(searchers):
            plans = ratios.get((name, budget))
            if not plans:
                continue
            units = list(plans[0])
            mean = np.mean([[p[u] for u in units] for p in plans], axis=0)
            ax.bar(np.arange(len(units)) + k * width, mean, width, color=colors[name], label=name)
        ax.set_xticks(np.arange(len(units)) + 0.4 - width / 2, units, rotation=60, ha="right", fontsize=7)
        ax.set(ylabel="preserve ratio", ylim=(0, 1.05), title=f"Best plan per layer ({budget}, mean over seeds)")
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def _n_units(ratios: dict) -> int:
    return max(len(p) for plans in ratios.values() for p in plans)


def plot_best_so_far(trials: pd.DataFrame, path: Path) -> bool:
    if "val_accuracy" not in trials:
        return False
    trials = search_trials(trials)
    budgets = sorted(trials["budget"].unique())
    colors = _colors(trials["searcher"].unique().tolist())
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        labelled = set()
        for (name, _run), t in trials[trials["budget"] == budget].groupby(["searcher", "run"]):
            t = t.sort_values("index")
            best = t["val_accuracy"].cummax().to_numpy()
            ax.plot(np.arange(1, len(best) + 1), best, color=colors[name], marker="." if len(best) < 3 else None,
                    label=None if name in labelled else name)
            labelled.add(name)
        ax.set(xlabel="evaluations", ylabel="best val accuracy so far", title=f"Search progress ({budget})")
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_ddpg_rewards(trials: pd.DataFrame, path: Path) -> bool:
    if "episode" not in trials or trials["episode"].isna().all():
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, t in trials.dropna(subset=["episode"]).groupby("run"):
        t = t.sort_values("episode")
        line, = ax.plot(t["episode"], t["reward"], lw=1, label=run)
        if "warmup" in t:
            warm = t[t["warmup"].fillna(False).astype(bool)]
            ax.scatter(warm["episode"], warm["reward"], s=8, color=line.get_color(), alpha=0.4)
    ax.set(xlabel="episode", ylabel="reward", title="DDPG reward per episode (dots: warm-up)")
    ax.legend(fontsize=7)
    _save(fig, path)
    return True


def plot_netadapt(trials: pd.DataFrame, path: Path) -> bool:
    if "iteration" not in trials or "chosen" not in trials or trials["iteration"].isna().all():
        return False
    chosen = trials.dropna(subset=["iteration"])
    chosen = chosen[chosen["chosen"].fillna(False).astype(bool)]
    if chosen.empty:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for run, t in chosen.groupby("run"):
        t = t.sort_values(["iteration", "index"])
        line, = top.plot(t["iteration"], t["resource"], marker="o", ms=3, label=run)
        if "target" in t:
            top.plot(t["iteration"], t["target"], ls=":", color=line.get_color())
        bottom.plot(t["iteration"], t["val_accuracy"], marker="o", ms=3, color=line.get_color())
    top.set(ylabel="resource (dotted: target)", title="NetAdapt trajectory (chosen proposal per iteration)")
    bottom.set(xlabel="iteration", ylabel="val accuracy (short-term fine-tuned)")
    top.legend(fontsize=7)
    _save(fig, path)
    return True


# ------------------------------------------------------------------------------------- report


def write_report(paths: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Load the runs under ``paths`` and write ``report.md``, ``results.csv`` and plots to ``out``.

    Returns ``{"runs", "summary" (mean ± std table), "efficiency" (:func:`sample_efficiency`),
    "plots", "notes", "out"}``.
    """
    run_dirs = find_run_dirs(paths)
    out = Path(out)
    runs = load_runs(run_dirs)
    trials = load_trials([Path(p) for p in runs["path"]])
    summary = mean_std_table(aggregate(runs))
    efficiency = sample_efficiency(trials)
    out.mkdir(parents=True, exist_ok=True)  # only once every input has been read
    atomic_write_text(out / "results.csv", runs.to_csv(index=False))
    plots, notes = _plots(runs, trials, out)
    if efficiency.empty:
        notes.append("Sample efficiency: skipped (no `random` run to measure against).")
    atomic_write_text(out / "report.md", _markdown(runs, summary, efficiency, plots, notes))
    return {"runs": runs, "summary": summary, "efficiency": efficiency, "plots": plots, "notes": notes,
            "out": out}


def efficiency_table(efficiency: pd.DataFrame) -> pd.DataFrame:
    """The sample-efficiency table as report.md and the CLI show it."""
    out = efficiency[KEYS].copy()
    out["reached random's best"] = [f"{r} of {n}" for r, n in zip(efficiency["reached"], efficiency["runs"],
                                                                   strict=True)]
    out["evaluations to reach"] = [_fmt(v, 1) for v in efficiency["evaluations"]]
    out["random's best"] = [_fmt(v) for v in efficiency["reference_best"]]
    return out


def _plots(runs: pd.DataFrame, trials: pd.DataFrame, out: Path):
    plots: dict[str, Path] = {}
    notes: list[str] = []
    specs = [
        ("accuracy_vs_cost", "Accuracy vs cost with each searcher's Pareto front",
         lambda p: not trials.empty and plot_accuracy_vs_cost(trials, p), "no trials recorded"),
        ("preserve_ratios", "Best plan's per-layer preserve ratios, searchers side by side",
         lambda p: plot_preserve_ratios(runs, p), "no best_plan.json found"),
        ("best_so_far", "Best-so-far accuracy vs evaluations",
         lambda p: not trials.empty and plot_best_so_far(trials, p), "no trials recorded"),
        ("ddpg_reward", "DDPG reward per episode",
         lambda p: not trials.empty and plot_ddpg_rewards(trials, p), "no DDPG runs (rows with `episode`)"),
        ("netadapt_trajectory", "NetAdapt resource and accuracy per iteration",
         lambda p: not trials.empty and plot_netadapt(trials, p), "no NetAdapt runs (rows with `iteration`)"),
    ]
    for name, title, draw, why in specs:
        path = out / f"{name}.png"
        if draw(path):
            plots[title] = path
        else:
            notes.append(f"{title}: skipped ({why}).")
    return plots, notes


def _markdown(runs: pd.DataFrame, summary: pd.DataFrame, efficiency: pd.DataFrame, plots: dict[str, Path],
              notes: list[str]) -> str:
    table = runs.drop(columns=["path"])
    parts = [
        "# autoprune comparison", "",
        f"{len(runs)} runs: searchers {', '.join(sorted(runs['searcher'].unique()))}; "
        f"budgets {', '.join(sorted(runs['budget'].unique()))}; seeds "
        f"{', '.join(map(str, sorted(runs['seed'].unique())))}.", "",
        "## Mean ± std over seeds", "", markdown_table(summary), "",
        "## Every run", "", markdown_table(table), "",
        "Columns: kept fractions of the base model's FLOPs (MACs) / params / latency; val accuracy of the "
        "best plan before fine-tuning (adaptive BN); test accuracy after the long-term fine-tune; plans "
        "evaluated; wall time in seconds.", "",
    ]
    if not efficiency.empty:
        parts += ["## Sample efficiency", "",
                  "Evaluations each searcher needed until its best-so-far val accuracy (before fine-tuning) "
                  "reached the best that `random` found in the same budget and seed; the mean is over the "
                  "runs that reached it. Re-ranking rows are not counted, nor runs scored after short-term "
                  "fine-tuning (NetAdapt): their accuracies are not proxy scores.", "",
                  markdown_table(efficiency_table(efficiency)), ""]
    parts += ["## Plots", ""]
    for title, path in plots.items():
        parts += [f"### {title}", "", f"![{title}]({path.name})", ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)
