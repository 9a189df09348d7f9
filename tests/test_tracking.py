"""Experiment tracking (``tracking:``): MLflow parent run + nested run per trial, TensorBoard scalars,
resume without duplicates, and the one-line errors for a missing package."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import tiny_config, write_config

from autoprune.cli import main
from autoprune.config import load_config
from autoprune.errors import ConfigError
from autoprune.pipeline.tracking import STATE_FILE, flatten, progress_metrics, track
from autoprune.search.records import TrialRecorder


def _row(acc: float, kept: float = 0.5) -> dict:
    return {"searcher": "random", "ratio/conv1": kept, "channels/conv1": 4, "flops": 10.0, "flops_kept": kept,
            "val_accuracy": acc, "reward": float("nan"), "cached": False, "time": 1.0}


def test_progress_metrics_and_flatten():
    row = {"val_accuracy": 0.5, "reward": float("nan"), "flops_kept": 0.4, "latency_kept": 0.6, "cached": True}
    assert progress_metrics(row, 0.7) == {"search/val_accuracy": 0.5, "search/flops_kept": 0.4,
                                          "search/latency_kept": 0.6, "search/best_val_accuracy": 0.7}
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}


def test_recorder_observers_see_every_row(tmp_path):
    recorder = TrialRecorder(tmp_path / "trials.parquet")
    seen = []
    recorder.observers.append(seen.append)
    recorder.append({"val_accuracy": 0.5})
    recorder.append({"val_accuracy": 0.6}, flush=False)
    assert [r["index"] for r in seen] == [0, 1]


def test_tracking_off_is_a_no_op(tmp_path):
    cfg = load_config(tiny_config())
    recorder = TrialRecorder(tmp_path / "trials.parquet")
    with track(cfg, tmp_path, recorder):
        recorder.append(_row(0.5))
    assert recorder.observers == [] and not (tmp_path / STATE_FILE).exists()


def test_mlflow_parent_run_nested_trials_and_resume(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    cfg = load_config(tiny_config(), ["tracking.mlflow=true", f"tracking.uri={uri}"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorder = TrialRecorder(run_dir / "trials.parquet")
    with track(cfg, run_dir, recorder):
        for acc in (0.3, 0.6, 0.5):
            recorder.append(_row(acc))
        (run_dir / "summary.json").write_text(json.dumps({"pruned": {"test_accuracy_after_finetune": 0.9}}))
    parent = json.loads((run_dir / STATE_FILE).read_text())["mlflow"]["run_id"]

    # a resume: the searcher dropped trial 2 and records it again, then one more
    resumed = TrialRecorder.resume(run_dir / "trials.parquet")
    resumed.rows = resumed.rows[:2]
    with track(cfg, run_dir, resumed):
        resumed.append(_row(0.8, kept=0.45))
        resumed.append(_row(0.7))

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 5 and len(children) == 4  # one parent, one nested run per trial, no duplicate
    by_trial = {int(r.data.tags["autoprune.trial"]): r for r in children}
    assert sorted(by_trial) == [0, 1, 2, 3]
    assert by_trial[2].data.metrics["val_accuracy"] == 0.8 and by_trial[2].data.params["ratio/conv1"] == "0.45"
    assert set(by_trial[0].data.metrics) >= {"flops_kept", "val_accuracy"} and "reward" not in by_trial[0].data.metrics
    top = client.get_run(parent)
    assert top.info.status == "FINISHED" and top.data.params["searcher/name"] == "random"
    assert top.data.metrics["pruned/test_accuracy_after_finetune"] == 0.9
    best = client.get_metric_history(parent, "search/best_val_accuracy")
    assert max(m.value for m in best) == 0.8
    assert "run" in {a.path for a in client.list_artifacts(parent)}


def test_failed_search_marks_the_parent_run_failed(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(tiny_config(), ["tracking.mlflow=true", f"tracking.uri={uri}"])
    recorder = TrialRecorder(tmp_path / "trials.parquet")
    with pytest.raises(RuntimeError), track(cfg, tmp_path, recorder):
        recorder.append(_row(0.5))
        raise RuntimeError("boom")
    parent = json.loads((tmp_path / STATE_FILE).read_text())["mlflow"]["run_id"]
    assert MlflowClient(uri).get_run(parent).info.status == "FAILED"


def test_search_logs_trials_summary_model_and_plots(tmp_path):
    """Through the pipeline: ``autoprune search`` with tracking on (the hook in run_search)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = tiny_config(tracking={"mlflow": True, "uri": uri, "tensorboard": _has_tensorboard()})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parent = json.loads((out / STATE_FILE).read_text())["mlflow"]["run_id"]
    assert sum(r.data.tags.get("mlflow.parentRunId") == parent for r in runs) == 3  # searcher.evaluations
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"model", "report", "run"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent, "model")] == ["model/pruned_model.pt"]
    assert any(a.path.endswith(".png") for a in client.list_artifacts(parent, "report"))
    if _has_tensorboard():
        assert any(p.stat().st_size > 0 for p in (out / "tensorboard").glob("events.out.tfevents.*"))


def _has_tensorboard() -> bool:
    return any(importlib.util.find_spec(m) for m in ("tensorboardX", "tensorboard"))


def test_missing_package_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match="tracking.mlflow needs the mlflow package"):
        load_config(tiny_config(), ["tracking.mlflow=true"])
    assert main(["search", write_config(tmp_path, tiny_config(tracking={"mlflow": True}))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprune: error: tracking.mlflow needs") and "\n" not in err


def test_unknown_tracking_key(tmp_path):
    with pytest.raises(ConfigError, match=r"tracking\.mlfow.*tracking\.mlflow"):
        load_config(tiny_config(tracking={"mlfow": True}))
