"""What the CLI prints and writes is true: the times in summary.json (cumulative over --resume, with the
segments listed) and ``--searcher`` keeping the options that still apply (refusals: test_bad_inputs.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import TESTS, tiny_config, write_config

import autoprune.pipeline.run
import autoprune.pipeline.session
from autoprune.atomic import read_trials
from autoprune.cli import main
from autoprune.errors import AutopruneError
from autoprune.search.base import switch_searcher
from autoprune.search.records import TrialRecorder

TIMES = ("run_seconds", "setup_seconds", "base_training_seconds", "search_seconds", "evaluation_seconds",
         "finetune_seconds", "test_seconds", "other_seconds")


def slow_down(monkeypatch, name: str, seconds: float) -> None:
    """Make ``name`` (a function in its module) take ``seconds`` longer, so its time is recognisable."""
    module, _, attr = name.rpartition(".")
    target = {"autoprune.pipeline.session": autoprune.pipeline.session, "autoprune.pipeline.run": autoprune.pipeline.run}
    original = getattr(target[module], attr)

    def slower(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    monkeypatch.setattr(target[module], attr, slower)


def summary_of(run) -> dict:
    return json.loads((run / "summary.json").read_text())


# ----------------------------------------------------------------------------------- timing


def test_each_printed_and_written_time_is_what_it_says(tmp_path, capsys, monkeypatch):
    slow_down(monkeypatch, "autoprune.pipeline.session.train_model", 1.0)  # base-model training: >= 1 s
    slow_down(monkeypatch, "autoprune.pipeline.run.long_term_finetune", 1.5)  # fine-tune: >= 1.5 s
    out = tmp_path / "run"
    started = time.time()
    assert main(["search", write_config(tmp_path, tiny_config(train={"epochs": 1, "lr": 0.05, "batch_size": 64})),
                 "--out", str(out), "--no-progress"]) == 0
    outside = time.time() - started
    printed = capsys.readouterr().out.splitlines()
    s = summary_of(out)
    t = s["timing"]
    assert all(isinstance(t[k], float) and t[k] >= 0 for k in TIMES)
    assert s["wall_seconds"] == t["run_seconds"] <= outside
    trials = pd.read_parquet(out / "trials.parquet")
    assert t["evaluations"] == s["evaluations"] == len(trials) == 3
    assert t["evaluation_seconds"] == pytest.approx(trials["seconds"].sum())
    assert t["cached_evaluations"] == int(trials["cached"].sum())
    assert t["evaluation_seconds"] <= t["search_seconds"]  # in-process: scoring is part of the search
    assert 1.0 <= t["base_training_seconds"] <= t["setup_seconds"]
    assert 1.5 <= t["finetune_seconds"] < t["run_seconds"] - t["base_training_seconds"]
    parts = sum(t[k] for k in ("setup_seconds", "search_seconds", "finetune_seconds", "test_seconds", "other_seconds"))
    assert parts == pytest.approx(t["run_seconds"])
    [segment] = t["segments"]
    assert segment["kind"] == "start" and segment["status"] == "finished"
    assert (segment["evaluations_before"], segment["evaluations_after"]) == (0, 3)
    assert segment["seconds"] == t["run_seconds"]
    assert json.loads((out / "run_state.json").read_text())["segments"] == t["segments"]
    assert printed[0] == (f"searcher random: 3 evaluations ({t['evaluation_seconds']:.1f} s of scoring) "
                          f"in a {t['run_seconds']:.1f} s run")
    assert printed[1].startswith(f"time     setup {t['setup_seconds']:.1f} s (base-model training "
                                 f"{t['base_training_seconds']:.1f} s), search {t['search_seconds']:.1f} s, "
                                 f"fine-tune {t['finetune_seconds']:.1f} s")


def test_times_are_cumulative_over_an_interrupt_and_a_resume(tmp_path, capsys, monkeypatch):
    raw = tiny_config(searcher={"name": "random", "evaluations": 6}, train={"epochs": 1, "lr": 0.05, "batch_size": 64})
    cfg, out = write_config(tmp_path, raw), tmp_path / "run"
    slow_down(monkeypatch, "autoprune.pipeline.session.train_model", 1.0)  # only the first part trains
    append = TrialRecorder.append

    def interrupted_after_3(self, row, flush=True):
        if len(self.rows) == 3:
            raise KeyboardInterrupt
        return append(self, row, flush)

    monkeypatch.setattr(TrialRecorder, "append", interrupted_after_3)
    started = time.time()
    assert main(["search", cfg, "--out", str(out), "--no-progress"]) == 130
    first_outside = time.time() - started
    [first] = json.loads((out / "run_state.json").read_text())["segments"]
    assert (first["kind"], first["status"], first["evaluations_after"]) == ("start", "interrupted", 3)
    assert not (out / "summary.json").exists()

    monkeypatch.setattr(TrialRecorder, "append", append)
    capsys.readouterr()
    started = time.time()
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    second_outside = time.time() - started
    t = summary_of(out)["timing"]
    segments = t["segments"]
    assert [(s["kind"], s["status"]) for s in segments] == [("start", "interrupted"), ("resume", "finished")]
    assert [(s["evaluations_before"], s["evaluations_after"]) for s in segments] == [(0, 3), (3, 6)]
    assert segments[0] == first
    assert segments[1]["started"] >= segments[0]["ended"]
    assert t["run_seconds"] == pytest.approx(sum(s["seconds"] for s in segments))
    assert segments[0]["seconds"] <= first_outside and segments[1]["seconds"] <= second_outside
    assert t["run_seconds"] > segments[1]["seconds"] + 1.0  # the first part (its base-model training) counts
    assert t["base_training_seconds"] >= 1.0 and segments[1]["phases"]["base_training"] == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert t["evaluation_seconds"] == pytest.approx(trials["seconds"].sum()) and t["evaluations"] == 6
    assert "over 2 segments (the start and 1 resume)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_kill_9_segment_is_counted_up_to_its_last_heartbeat(tmp_path):
    raw = tiny_config(searcher={"name": "random", "evaluations": 40})
    cfg, out = write_config(tmp_path, raw), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", cfg, "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = out / "trials.parquet"
    deadline = time.time() + 300
    while time.time() < deadline:
        if len(read_trials(trials)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_outside = time.time() - started
    before = pd.read_parquet(trials)
    assert 5 <= len(before) < 40, "the kill should land mid-search"
    [killed] = json.loads((out / "run_state.json").read_text())["segments"]
    assert killed["status"] == "running"  # as the killed process left it
    assert killed["ended"] >= before["time"].iloc[-2]  # a heartbeat with each saved trial
    assert killed["seconds"] <= killed_outside

    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    t = summary_of(out)["timing"]
    segments = t["segments"]
    assert [(s["kind"], s["status"]) for s in segments] == [("start", "killed"), ("resume", "finished")]
    assert {k: v for k, v in segments[0].items() if k != "status"} == {k: v for k, v in killed.items()
                                                                        if k != "status"}
    assert segments[0]["evaluations_after"] <= segments[1]["evaluations_before"] == len(before)
    assert t["run_seconds"] == pytest.approx(segments[0]["seconds"] + segments[1]["seconds"])
    assert t["run_seconds"] >= before["time"].iloc[-2] - killed["started"] + segments[1]["seconds"]
    assert t["base_training_seconds"] == segments[0]["phases"]["base_training"] > 0
    assert summary_of(out)["wall_seconds"] == t["run_seconds"]


def test_a_refused_resume_leaves_the_run_state_as_it_was(tmp_path, monkeypatch):
    """Only a resume that saved a trial (or its best plan) adds its segment."""
    out = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_config(train={"epochs": 0, "lr": 0.05, "batch_size": 64},
                                             finetune={"epochs": 0}))
    assert main(["search", cfg, "--out", str(out), "--no-progress"]) == 0
    state = (out / "run_state.json").read_bytes()

    def refuse(*args, **kwargs):
        raise AutopruneError("refused")

    monkeypatch.setattr(autoprune.pipeline.run, "search", refuse)
    assert main(["search", "--resume", str(out), "--no-progress"]) == 2
    assert (out / "run_state.json").read_bytes() == state


# --------------------------------------------------------------------------- --searcher NAME


def test_switching_searchers_carries_the_budget_of_evaluations_over():
    assert switch_searcher({"name": "random", "evaluations": 50}, "ddpg") == (
        {"name": "ddpg", "episodes": 50}, "keeping episodes=50 (from evaluations)")
    section, note = switch_searcher({"name": "ddpg", "episodes": 8, "warmup": 2, "hidden": [8, 8]}, "random")
    assert section == {"name": "random", "evaluations": 8}
    assert note == "keeping evaluations=8 (from episodes); dropping: warmup=2, hidden=[8, 8] (not options of random)"


def test_switching_searchers_keeps_shared_options_and_names_the_rest():
    import autoprune.agents.cma_es  # noqa: F401  (registers tpe and cmaes)
    import autoprune.agents.tpe  # noqa: F401

    section, note = switch_searcher({"name": "tpe", "evaluations": 7, "parallel": 2, "startup_trials": 3}, "cmaes")
    assert section == {"name": "cmaes", "evaluations": 7, "parallel": 2}
    assert note == "keeping evaluations=7, parallel=2; dropping: startup_trials=3 (not an option of cmaes)"
    section, note = switch_searcher({"name": "random", "evaluations": 5}, "uniform")  # no budget of evaluations
    assert section == {"name": "uniform"} and note == "dropping: evaluations=5 (not an option of uniform)"


def test_switching_searchers_lets_given_options_win():
    section, note = switch_searcher({"name": "random", "evaluations": 3}, "ddpg", given=["episodes"])
    assert section == {"name": "ddpg"} and note == "overridden: evaluations=3 (by searcher.episodes)"
    assert switch_searcher({"name": "ddpg", "episodes": 4}, "ddpg") == ({"name": "ddpg", "episodes": 4}, "")
    assert switch_searcher(None, "ddpg") == ({"name": "ddpg"}, "")
    with pytest.raises(AutopruneError, match="unknown searcher 'ddgp'"):
        switch_searcher({"name": "random"}, "ddgp")


class Stop(Exception):
    pass


@pytest.fixture
def no_run(monkeypatch):
    """Replace run_search: record the config it gets, stop."""
    seen = {}

    def fake_run_search(cfg, **kwargs):
        seen["searcher"] = dict(cfg.searcher)
        raise Stop

    monkeypatch.setattr(autoprune.pipeline.run, "run_search", fake_run_search)
    return seen


def test_cli_searcher_flag_keeps_the_evaluations_and_says_so_on_stderr(tmp_path, capsys, no_run):
    cfg = write_config(tmp_path, tiny_config(searcher={"name": "random", "evaluations": 50}))
    with pytest.raises(Stop):
        main(["search", cfg, "--searcher", "ddpg"])
    assert no_run["searcher"] == {"name": "ddpg", "episodes": 50}
    assert capsys.readouterr().err == "autoprune: --searcher ddpg: keeping episodes=50 (from evaluations)\n"
    cfg = write_config(tmp_path, tiny_config(searcher={"name": "ddpg", "episodes": 12, "warmup": 4}))
    with pytest.raises(Stop):
        main(["search", cfg, "--searcher", "random", "--set", "searcher.evaluations=9"])
    assert no_run["searcher"] == {"name": "random", "evaluations": 9}
    assert capsys.readouterr().err == ("autoprune: --searcher random: dropping: warmup=4 (not an option of random); "
                                       "overridden: episodes=12 (by searcher.evaluations)\n")


def test_cli_searcher_flag_is_quiet_when_nothing_changes(tmp_path, capsys, no_run):
    cfg = write_config(tmp_path, tiny_config(searcher={"name": "random", "evaluations": 4}))
    with pytest.raises(Stop):
        main(["search", cfg, "--searcher", "random"])
    with pytest.raises(Stop):
        main(["search", cfg, "--searcher", "ddpg", "--set", "searcher={name: ddpg, episodes: 2}"])
    assert no_run["searcher"] == {"name": "ddpg", "episodes": 2}
    assert capsys.readouterr().err == ""
