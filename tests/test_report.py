"""``autoprune run`` (Ray Tune trials, --resume) and ``autoprune compare`` (table, report, plots)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_config

from autoprune.cli import main
from autoprune.pipeline.efficiency import evaluations_to_reach, sample_efficiency
from autoprune.pipeline.report import (
    aggregate,
    load_runs,
    pareto_front,
    plot_ddpg_rewards,
    plot_netadapt,
    write_report,
)

ray = pytest.importorskip("ray")
PNG = b"\x89PNG\r\n\x1a\n"
BLOCKED = "tiny__uniform__flops0.5__1"


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, local_ray):
    """Two searchers x two seeds; one trial is blocked (its run dir is occupied), then resumed."""
    root = tmp_path_factory.mktemp("exp")
    cfg = tiny_config(searchers=["uniform", {"name": "random", "evaluations": 2}], budgets=["flops=0.5"],
                      seeds=[0, 1], ray={"workers": 0, "max_retries": 0})
    cfg["train"]["epochs"] = 1
    (root / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "out"
    blocker = out / "runs" / BLOCKED / "not-a-run"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("occupied")
    first = main(["run", str(root / "exp.yaml"), "--out", str(out), "--no-progress"])
    summaries = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")}
    shutil.rmtree(blocker.parent)
    second = main(["run", str(root / "exp.yaml"), "--out", str(out), "--no-progress", "--resume"])
    return {"out": out, "first": first, "second": second, "after_first": summaries}


def test_resume_finishes_only_the_missing_trial(experiment):
    out = experiment["out"]
    assert experiment["first"] == 2  # the blocked trial failed (max_retries 0): a one-line error, exit 2
    assert set(experiment["after_first"]) == {"tiny__uniform__flops0.5__0", "tiny__random__flops0.5__0",
                                              "tiny__random__flops0.5__1"}
    assert experiment["second"] == 0
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")}
    assert set(finished) == set(experiment["after_first"]) | {BLOCKED}
    for name, mtime in experiment["after_first"].items():  # finished trials were not run again
        assert finished[name] == mtime
    again = main(["run", str(out.parent / "exp.yaml"), "--out", str(out)])  # no silent overwrite
    assert again == 2
    for name in finished:  # each trial's run dir is a complete `autoprune search` run dir
        run = out / "runs" / name
        assert {"config.yaml", "trials.parquet", "best_plan.json", "pruned_model.pt"} <= {p.name for p in run.iterdir()}


def test_compare_writes_table_report_and_plots(experiment, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["compare", str(experiment["out"] / "runs"), "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "uniform" in printed and "random" in printed and "±" in printed
    for name in ("accuracy_vs_cost", "preserve_ratios", "best_so_far"):
        assert _is_png(report / f"{name}.png"), name
    assert not (report / "ddpg_reward.png").exists() and not (report / "netadapt_trajectory.png").exists()
    md = (report / "report.md").read_text()
    for run in experiment["after_first"]:
        assert f"| {run} |" in md
    assert "skipped (no DDPG runs" in md and "skipped (no NetAdapt runs" in md
    assert "## Sample efficiency" in md and "evaluations to reach random search's best" in printed
    csv = pd.read_csv(report / "results.csv")
    assert len(csv) == 4 and set(csv["searcher"]) == {"uniform", "random"}
    random_runs = csv[csv["searcher"] == "random"]
    assert (random_runs["evaluations"] == 2).all()
    for _, row in csv.iterrows():  # the table is what the run dirs say
        s = json.loads((experiment["out"] / "runs" / row["run"] / "summary.json").read_text())
        assert row["test_acc_after_ft"] == pytest.approx(s["pruned"]["test_accuracy_after_finetune"])
        assert row["flops_kept"] <= 0.5 + 1e-9


def test_mean_and_std_over_seeds(experiment):
    runs = load_runs(sorted(p.parent for p in (experiment["out"] / "runs").rglob("summary.json")))
    agg = aggregate(runs).set_index("searcher")
    for name, group in runs.groupby("searcher"):
        acc = group["test_acc_after_ft"].to_numpy(float)
        assert agg.loc[name, "test_acc_after_ft_mean"] == pytest.approx(acc.mean())
        assert agg.loc[name, "test_acc_after_ft_std"] == pytest.approx(acc.std())
        assert agg.loc[name, "seeds"] == 2


def test_pareto_front_is_the_non_dominated_set():
    rng = np.random.default_rng(0)
    cost, acc = rng.uniform(size=40), rng.uniform(size=40)
    xs, ys = pareto_front(cost, acc)
    for x, y in zip(xs, ys, strict=True):
        assert not np.any((cost <= x) & (acc > y))  # nothing cheaper-or-equal is more accurate
    dominated = [i for i in range(40) if np.any((cost <= cost[i]) & (acc > acc[i]))]
    assert len(xs) == 40 - len(dominated) and np.all(np.diff(ys) > 0)


def test_ddpg_and_netadapt_plots_from_their_trial_columns(tmp_path):
    n = 12
    ddpg = pd.DataFrame({"run": "d", "episode": np.arange(n), "reward": np.linspace(-1, 0, n),
                         "warmup": np.arange(n) < 4})
    assert plot_ddpg_rewards(ddpg, tmp_path / "ddpg.png") and _is_png(tmp_path / "ddpg.png")
    net = pd.DataFrame({"run": "n", "index": np.arange(n), "iteration": np.repeat(np.arange(4), 3),
                        "chosen": np.tile([False, True, False], 4), "resource": np.linspace(1, 0.5, n),
                        "target": np.linspace(0.95, 0.5, n), "val_accuracy": np.linspace(0.9, 0.8, n)})
    assert plot_netadapt(net, tmp_path / "net.png") and _is_png(tmp_path / "net.png")
    assert not plot_netadapt(ddpg, tmp_path / "none.png")  # no NetAdapt rows: skipped


def test_compare_of_nothing_is_a_clear_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    with pytest.raises(Exception, match="not a directory"):
        write_report([tmp_path / "missing"], tmp_path / "r")


def test_run_rejects_a_bad_combination_before_starting(tmp_path, capsys):
    cfg = tiny_config(searchers=["uniform", "no_such_searcher"], seeds=[0, 1])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "no_such_searcher" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(tiny_config()))
    assert main(["run", str(tmp_path / "good.yaml"), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no experiment to resume" in capsys.readouterr().err


def test_run_refuses_ray_train_workers_inside_tune_trials(tmp_path, capsys):
    """A Ray Train fit inside a Tune trial would wait for CPUs the trials hold: refused up front."""
    cfg = tiny_config(searchers=["uniform"], finetune={"epochs": 1, "workers": 2})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "finetune.workers" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_sample_efficiency_counts_evaluations_to_reach_random_best():
    def run(name, run, seed, scores, stage=None):
        return pd.DataFrame({"searcher": name, "run": run, "budget": "flops=0.5", "seed": seed,
                             "index": np.arange(len(scores)), "val_accuracy": scores, "stage": stage})

    trials = pd.concat([
        run("random", "r0", 0, [0.5, 0.7, 0.6, 0.8]),             # best 0.8 in seed 0
        run("random", "r1", 1, [0.4, 0.6]),                       # best 0.6 in seed 1
        run("tpe", "t0", 0, [0.6, 0.85, 0.7]),                     # reaches 0.8 at its 2nd evaluation
        run("tpe", "t1", 1, [0.5, 0.55, 0.6]),                     # reaches 0.6 at its 3rd
        run("ddpg", "d0", 0, [0.3, 0.4]),                          # never reaches 0.8 ...
        run("ddpg", "d0", 0, [0.99], stage="rerank").assign(index=[2]),  # ... a re-ranking row does not count
        run("netadapt", "n0", 0, [0.9, 0.95]).assign(iteration=[1, 2]),  # scored after short-term fine-tuning
    ], ignore_index=True)
    eff = sample_efficiency(trials).set_index("searcher")
    assert eff.loc["tpe", "reached"] == 2 and eff.loc["tpe", "evaluations"] == pytest.approx(2.5)
    assert eff.loc["random", "evaluations"] == pytest.approx(3.0)  # (4 + 2) / 2: its own best, found late
    assert eff.loc["ddpg", "reached"] == 0 and eff.loc["ddpg", "runs"] == 1
    assert np.isnan(eff.loc["ddpg", "evaluations"]) and "netadapt" not in eff.index
    assert sample_efficiency(trials[trials["searcher"] != "random"]).empty  # nothing to measure against
    assert evaluations_to_reach(np.array([0.1, 0.3, 0.2]), 0.3) == 2


def test_a_non_default_preset_is_part_of_the_searcher_label(tmp_path):
    from autoprune.pipeline.report import searcher_label

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text("searcher: {name: ddpg, preset: amc}\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yaml").write_text("searcher: {name: ddpg, preset: autoprune}\n")
    assert searcher_label(tmp_path / "a", "ddpg") == "ddpg:amc"
    assert searcher_label(tmp_path / "b", "ddpg") == "ddpg"
    assert searcher_label(tmp_path / "missing", "random") == "random"


def test_runs_rounded_to_another_multiple_are_compared_apart(tmp_path):
    """Two seeds of one searcher under one budget, one rounded to 16 (``pruning.round_to``, or what ``auto``
    chose for a LUT budget): two rows, not one mean over plans from different spaces."""
    def run(name, seed, round_to):
        d = tmp_path / name
        d.mkdir()
        summary = {"searcher": "tpe", "seed": seed, "budget": {"kind": "latency", "fraction": 0.6},
                   "pruned": {"flops_kept": 0.3, "test_accuracy_after_finetune": 0.9}, "evaluations": 4,
                   "wall_seconds": 1.0}
        if round_to is not None:
            summary["round_to"] = {"value": round_to, "auto": True}
        (d / "summary.json").write_text(json.dumps(summary))
        return d

    runs = load_runs([run("a", 0, 16), run("b", 1, 1), run("c", 2, None)])
    assert sorted(runs["budget"]) == ["latency=0.6", "latency=0.6", "latency=0.6 round_to 16"]
    agg = aggregate(runs).set_index("budget")
    assert agg.loc["latency=0.6", "seeds"] == 2 and agg.loc["latency=0.6 round_to 16", "seeds"] == 1
