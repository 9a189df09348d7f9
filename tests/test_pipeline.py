"""The pipeline counts a run with the search's plan-only counter (summary.json == trials == budget)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import tiny_config, write_config

from autoprune.cli import main
from autoprune.config import load_config
from autoprune.pipeline.artifacts import load_pruned
from autoprune.pipeline.run import run_search


def test_fine_params_budget_is_what_the_summary_reports(tmp_path, capsys):
    """Was: ``params 151,402 -> 151,402 (100.0% kept)`` (the dense shapes of the masked model)."""
    out = tmp_path / "run"
    raw = tiny_config(searcher={"name": "uniform"})
    code = main(["search", write_config(tmp_path, raw), "--set", "pruning.granularity=fine", "--budget", "params=0.3",
                 "--workers", "0", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    pruned, base = summary["pruned"], summary["base"]
    assert 0.2 < pruned["params_kept"] <= 0.3 + 1e-9 and pruned["flops_kept"] < 0.6
    assert pruned["params"] == pytest.approx(pruned["params_kept"] * base["params"])
    assert (pruned["dense_params"], pruned["dense_flops"]) == (base["params"], base["flops"])
    assert f"({pruned['params_kept']:.1%} kept, non-zero)" in printed and "100.0% kept" not in printed
    model = load_pruned(out / "pruned_model.pt")  # the summary counts the weights the model keeps
    nonzeros = sum(int((p != 0).sum()) for p in model.parameters())
    assert nonzeros == pytest.approx(pruned["params"], abs=0.002 * base["params"])
    assert summary["storage"]["nonzeros"] == nonzeros


def test_nm_params_budget_is_what_the_summary_reports(tmp_path):
    cfg = load_config(tiny_config(pruning={"granularity": "nm", "n": 3, "m": 4}, budget={"params": 0.3},
                                  searcher={"name": "uniform"}))
    run_dir = run_search(cfg, out=tmp_path / "run", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    pruned, base = summary["pruned"], summary["base"]
    assert 0.2 < pruned["params_kept"] <= 0.3 + 1e-9 and pruned["flops_kept"] < 1.0
    assert pruned["dense_params"] == base["params"]
    nonzeros = sum(int((p != 0).sum()) for p in load_pruned(run_dir / "pruned_model.pt").parameters())
    assert nonzeros == pytest.approx(pruned["params"], abs=0.002 * base["params"])


def test_channel_summary_matches_the_best_plans_recorded_costs(tmp_path):
    run_dir = run_search(load_config(tiny_config()), out=tmp_path / "run", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    best = json.loads((run_dir / "best_plan.json").read_text())["meta"]
    for kind in ("flops", "params"):
        assert summary["pruned"][kind] == best[kind] and summary["pruned"][f"{kind}_kept"] == pytest.approx(
            best[f"{kind}_kept"])
    assert "dense_params" not in summary["pruned"]
    model = load_pruned(run_dir / "pruned_model.pt")
    assert sum(p.numel() for p in model.parameters()) == summary["pruned"]["params"]


def test_the_summary_records_the_searchers_resolved_options_and_benchmarks_rerun_a_changed_one(tmp_path, capsys):
    """A preset whose defaults change later must not make a finished run's searcher ambiguous: the
    summary keeps the options as they ran, and a benchmark reruns a run whose options now resolve
    differently instead of reusing it."""
    from autoprune.search.base import SEARCHERS
    from benchmarks.common import finished

    searcher = {"name": "random", "evaluations": 3}
    run_dir = run_search(load_config(tiny_config(searcher=searcher)), out=tmp_path / "run", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    options = SEARCHERS.get("random").parse_options(searcher)
    assert summary["searcher_options"] == json.loads(json.dumps(dataclasses.asdict(options)))
    assert summary["searcher_options"]["evaluations"] == 3
    assert finished(run_dir, searcher)
    assert not finished(run_dir, {**searcher, "evaluations": 4})  # the options changed since: rerun
    assert not finished(tmp_path / "nothing", searcher)
    del summary["searcher_options"]  # a run from before summaries recorded them: taken as it is
    (run_dir / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert finished(run_dir, {**searcher, "evaluations": 4})
    assert "reused as it is" in capsys.readouterr().out  # said, so a stale run is not reused unseen


def test_a_partial_hard_benchmark_rerun_is_compared_with_the_committed_peers(tmp_path, monkeypatch):
    """``search_quality_hard --references results``: the searchers not rerun come from the committed
    results, the targets compare the rerun with them, and sample efficiency uses random's best proxy
    (committed rows carry no best-so-far curve)."""
    import pandas as pd

    from benchmarks import search_quality_hard as sqh

    def row(searcher, budget, proxy, test, curve=()):
        return {"searcher": searcher, "budget": budget, "seed": 0, "flops_kept": float(budget.split("=")[1]),
                "best_proxy": proxy, "val_before": proxy, "test_after": test, "evaluations": 3,
                "rerank_evaluations": 0, "rerank_s": 0.0, "rerank_changed": False, "wall_s": 1.0,
                "best_so_far": list(curve)}

    committed = [row(s, b, p, t) for b in ("flops=0.15", "flops=0.3")
                 for s, p, t in (("random", 0.60, 0.95), ("tpe", 0.62, 0.95), ("cmaes", 0.61, 0.95),
                                 ("ddpg", 0.50, 0.94), ("uniform", 0.55, 0.955), ("tp_global", 0.40, 0.93))]
    (tmp_path / "search_quality_hard.json").write_text(json.dumps(
        {"date": "2026-11-30", "rows": [{k: v for k, v in r.items() if k != "best_so_far"} for r in committed],
         "efficiency": [{"budget": "flops=0.15", "seed": 0, "searcher": "tpe", "to_reach": 7.0}]}))
    monkeypatch.setattr(sqh, "RESULTS", tmp_path)
    rerun = pd.DataFrame([row("ddpg", b, 0.70, 0.96, [0.3, 0.65, 0.70]) for b in ("flops=0.15", "flops=0.3")])
    rows, line = sqh.committed_rows("search_quality_hard", rerun)
    assert {r["searcher"] for r in rows} == {"random", "tpe", "cmaes", "uniform", "tp_global"}  # not the old ddpg
    assert "2026-11-30" in line and "random" in line
    df = pd.concat([rerun, pd.DataFrame(rows)], ignore_index=True)
    eff = sqh.efficiency(df)
    reach = {(e["budget"], e["searcher"]): e["to_reach"] for e in eff.to_dict("records")}
    assert reach[("flops=0.15", "ddpg")] == 2 and reach[("flops=0.3", "ddpg")] == 2  # from the rerun's curve
    assert reach[("flops=0.15", "tpe")] == 7  # the committed count
    assert pd.isna(reach[("flops=0.3", "tpe")]) and pd.isna(reach[("flops=0.15", "cmaes")])  # none committed
    met = {t["name"]: t["met"] for t in sqh.targets_of(df)}
    assert met["ddpg >= random at equal evaluations, flops=0.15"]
    assert met["best searcher vs random, best proxy at equal evaluations, flops=0.15"]  # ddpg 0.70 >= 0.60 + 0.03
    assert met["with re-ranking, best searcher's test acc after FT vs tp_global, flops=0.15"]
    assert not met["with re-ranking, best searcher's test acc after FT vs uniform, flops=0.15"]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_train_optimizer_is_the_one_every_training_step_uses(optimizer):
    """``train.optimizer: adamw``: Adam's first step moves every weight with a gradient by ~lr whatever the
    gradient's size (SGD's moves by lr x gradient)."""
    from torch.utils.data import TensorDataset

    from autoprune.config import TrainConfig
    from autoprune.core.train import train_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    before = model[1].weight.detach().clone()
    data = TensorDataset(torch.randn(32, 1, 4, 4), torch.randint(0, 4, (32,)))
    cfg = dataclasses.replace(TrainConfig(), optimizer=optimizer, weight_decay=0.0, batch_size=32)
    train_model(model, data, cfg, lr=1e-3, max_steps=1, progress=False)
    step = (model[1].weight.detach() - before).abs()
    if optimizer == "adamw":
        assert step.max() <= 1.01e-3 and step.median() >= 0.9e-3
    else:
        assert step.max() < 0.5e-3  # lr x a gradient below 0.5 (a 4-class cross-entropy on unit-scale inputs)
