"""Sample efficiency: how many evaluations each searcher needs to reach random search's best.

Only rows scored by the proxy count (:func:`proxy_trials`): re-ranking rows and runs whose rows were
scored after a short-term fine-tune are not comparable with a proxy score. ``autoprune compare``
shows the table (:func:`autoprune.pipeline.report.efficiency_table`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEYS = ["searcher", "budget"]
"""The columns a comparison groups runs by."""


def search_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The searchers' own evaluations (re-ranking rows, scored after a fine-tune, left out)."""
    if "stage" in trials:
        return trials[trials["stage"].isna() | (trials["stage"] != "rerank")]
    return trials


def evaluations_to_reach(scores: np.ndarray, threshold: float) -> float:
    """1-based count of evaluations after which the best-so-far first reaches ``threshold`` (NaN: never)."""
    hits = np.flatnonzero(np.maximum.accumulate(scores) >= threshold - 1e-12) if len(scores) else []
    return float(hits[0] + 1) if len(hits) else float("nan")


def proxy_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Rows scored by the proxy alone: no re-ranking rows, and no run whose rows were scored after a
    short-term fine-tune (``finetune_steps`` > 0, or NetAdapt's ``iteration`` rows from before that
    column was recorded): their accuracies are not comparable with a proxy score."""
    t = search_trials(trials)
    tuned = pd.Series(False, index=t.index)
    if "finetune_steps" in t:
        tuned |= t["finetune_steps"].fillna(0).astype(float) > 0
    if "iteration" in t:
        tuned |= t["iteration"].notna()
    runs = set(t.loc[tuned, "run"]) if "run" in t else set()
    return t[~t["run"].isin(runs)] if runs else t


def sample_efficiency(trials: pd.DataFrame, reference: str = "random") -> pd.DataFrame:
    """Evaluations each searcher needed to reach ``reference``'s best val accuracy of the same budget
    and seed; per (searcher, budget): ``runs``, ``reached`` (runs that got there), ``evaluations``
    (mean over the runs that did), ``reference_best`` (mean of the thresholds). Only proxy-scored runs
    count (:func:`proxy_trials`). Empty without ``reference`` runs."""
    cols = KEYS + ["runs", "reached", "evaluations", "reference_best"]
    t = proxy_trials(trials) if not trials.empty else trials
    if t.empty or "val_accuracy" not in t or reference not in set(t["searcher"]):
        return pd.DataFrame(columns=cols)
    order = "index" if "index" in t else None
    rows = []
    for (budget, _seed), g in t.groupby(["budget", "seed"], dropna=False):
        ref = g[g["searcher"] == reference]
        if ref.empty:
            continue
        threshold = float(ref.groupby("run")["val_accuracy"].max().mean())
        for (name, _run), r in g.groupby(["searcher", "run"]):
            r = r.sort_values(order) if order else r
            rows.append({"searcher": name, "budget": budget, "threshold": threshold,
                         "to_reach": evaluations_to_reach(r["val_accuracy"].to_numpy(float), threshold)})
    df = pd.DataFrame(rows)
    out = df.groupby(KEYS, sort=True).agg(runs=("to_reach", "size"), reached=("to_reach", "count"),
                                          evaluations=("to_reach", "mean"), reference_best=("threshold", "mean"))
    return out.reset_index()[cols]
