"""The ``ddpg`` searcher (AMC on SB3's DDPG): records, reward rewrite, parallel episodes, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TESTS, tiny_config, write_config

from autoprune.agents.ddpg import DdpgSearcher, TruncatedNormalNoise
from autoprune.atomic import read_trials
from autoprune.cli import main
from autoprune.errors import AutopruneError, ConfigError
from autoprune.pipeline.session import seed_everything
from autoprune.search.records import TrialRecorder

FAST = {"episodes": 6, "warmup": 2, "hidden": [32, 32], "batch_size": 16, "checkpoint_every": 2}


class Crash(Exception):
    pass


class CountingEvaluator:
    """Wraps an evaluator: records the size of every ``evaluate_many`` batch; may crash on call N."""

    def __init__(self, inner, crash_at: int | None = None) -> None:
        self.inner, self.crash_at, self.batches = inner, crash_at, []

    def evaluate(self, plan, finetune_steps=0):
        return self.inner.evaluate(plan, finetune_steps)

    def evaluate_many(self, plans, finetune_steps=0):
        if self.crash_at is not None and len(self.batches) + 1 == self.crash_at:
            raise Crash("simulated interruption")
        self.batches.append(len(plans))
        return self.inner.evaluate_many(plans, finetune_steps)


def make_ctx(session, run_dir: Path, evaluator=None, resume: bool = False):
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "trials.parquet"
    recorder = TrialRecorder.resume(path) if resume else TrialRecorder(path)
    ctx = session.context(evaluator or CountingEvaluator(session.evaluator()), recorder, run_dir, resume,
                          progress=False)
    ctx.searcher_name = "ddpg"
    return ctx


def run(ctx, **options):
    seed_everything(ctx.seed)  # as the runner does before every search
    searcher = DdpgSearcher(ctx, DdpgSearcher.parse_options({**FAST, **options}))
    return searcher, searcher.search()


def expected_advantages(rewards: np.ndarray, n: int, decay: float = 0.95) -> np.ndarray:
    """AMC's rewrite: reward minus the moving-average baseline held before each rollout of n episodes."""
    out, baseline = [], None
    for start in range(0, len(rewards), n):
        batch = rewards[start:start + n]
        base = batch.mean() if baseline is None else baseline
        out.extend(batch - base)
        for r in batch:
            base = decay * base + (1 - decay) * r
        baseline = base
    return np.array(out)


def test_options_are_parsed_strictly():
    opts = DdpgSearcher.parse_options({"name": "ddpg"})
    assert (opts.episodes, opts.warmup, opts.sigma, opts.sigma_decay) == (400, 100, 0.5, 0.95)
    assert (opts.hidden, opts.actor_lr, opts.critic_lr, opts.tau, opts.gamma, opts.batch_size) == (
        [300, 300], 1e-4, 1e-3, 0.01, 1.0, 64)
    bad = [({"episode": 3}, "did you mean"), ({"episodes": 5, "parallel_episodes": 2}, "multiples"),
           ({"sigma_decay": 1.5}, "sigma_decay"), ({"hidden": []}, "hidden"),
           ({"sigma": 0.1, "sigma_min": 0.2}, "sigma_min"), ({"sigma_min": -0.1}, "sigma_min"),
           ({"explore_best": 1.5}, "explore_best"),
           ({"reward": "blend", "reward_kwargs": {"wieght": 1}}, "reward_kwargs"), ({"episodes": 0}, "episodes")]
    for raw, message in bad:
        with pytest.raises(ConfigError, match=message):
            DdpgSearcher.parse_options(raw)
    with pytest.raises(AutopruneError, match="unknown reward"):
        DdpgSearcher.parse_options({"reward": "acc_flop"})


def test_tensorboard_option_needs_the_package():
    pytest.importorskip("stable_baselines3")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            DdpgSearcher.parse_options({"tensorboard": True})
    else:
        assert DdpgSearcher.parse_options({"tensorboard": True}).tensorboard


def test_sigma_decays_after_the_warm_up_down_to_its_floor(tiny_session, tmp_path):
    ctx = make_ctx(tiny_session, tmp_path / "run")
    run(ctx, replay_episodes=10, sigma_decay=0.5, sigma_min=0.1)
    df = read_trials(tmp_path / "run" / "trials.parquet")
    assert np.allclose(df["sigma"], [0.5, 0.5, 0.5, 0.25, 0.125, 0.1])  # warm-up 2, then x0.5, floored at 0.1


def test_truncated_normal_noise_keeps_actions_in_bounds():
    mu = np.array([[0.95], [-1.0], [0.0]])
    noise = TruncatedNormalNoise(3, seed=0)
    noise.mean_fn = lambda: mu
    assert not noise().any()  # inactive during warm-up
    noise.active, noise.sigma = True, 1.0
    draws = np.stack([noise() for _ in range(2000)]) + mu
    assert draws.min() >= -1 and draws.max() <= 1
    assert draws[:, 1].mean() > -0.6 and draws[:, 0].mean() < 0.7  # pushed inwards, not clipped at bounds
    noise.sigma = 0.1
    assert np.std(np.stack([noise() for _ in range(2000)])[:, 2]) == pytest.approx(0.1, rel=0.1)


def test_noise_can_be_centred_away_from_the_actor():
    actor, centre = np.array([[0.5], [-0.5]]), np.array([[-0.8], [0.2]])
    noise = TruncatedNormalNoise(2, seed=0)
    noise.mean_fn, noise.center_fn = (lambda: actor), (lambda a: centre + 0 * a)
    noise.active, noise.sigma = True, 0.05
    draws = np.stack([noise() for _ in range(500)]) + actor  # SB3 adds the offset to the actor's action
    assert np.allclose(draws.mean(axis=0), centre, atol=0.01) and draws.std(axis=0).max() < 0.07


def test_explore_best_replays_the_incumbent_plus_noise(tiny_session, tmp_path):
    ctx = make_ctx(tiny_session, tmp_path / "run")
    searcher, plan = run(ctx, replay_episodes=10, sigma=0.001, sigma_min=0.001, explore_best=1.0)
    df = read_trials(tmp_path / "run" / "trials.parquet")
    assert list(df["explore_best"]) == [False, False, True, True, True, True]
    counts = df[[f"channels/{n}" for n in ctx.graph.names]].to_numpy()
    for e in range(2, 6):  # with almost no noise each learning episode replays the best plan before it
        best = int(np.argmax(df["reward"].to_numpy()[:e]))
        assert (counts[e] == counts[best]).all()
    assert [searcher.explores_best(e) for e in range(2, 6)] == [True] * 4
    searcher.options.explore_best = 0.5
    assert [searcher.explores_best(e) for e in range(0, 8)] == [False, False, False, True, False, True, False, True]
    searcher.options.explore_best = 0.25
    assert [searcher.explores_best(e) for e in range(2, 10)] == [False, False, False, True] * 2


def test_short_run_returns_within_budget_plan_and_fills_trials(tiny_session, tmp_path):
    ctx = make_ctx(tiny_session, tmp_path / "run")
    searcher, plan = run(ctx, replay_episodes=10)
    assert ctx.fits(plan)
    df = read_trials(tmp_path / "run" / "trials.parquet")
    assert list(df["episode"]) == list(range(6)) and list(df["warmup"]) == [True, True] + [False] * 4
    assert np.allclose(df["sigma"], [0.5, 0.5] + [0.5 * 0.95**k for k in range(4)])
    assert (df["flops_kept"] <= tiny_session.budget.fraction + 1e-9).all()
    env = searcher.envs[0]
    counts = [[int(r[f"channels/{n}"]) for n in ctx.graph.names] for _, r in df.iterrows()]
    assert np.allclose(df["reward"], [env.reward_of(c, a) for c, a in zip(counts, df["val_accuracy"], strict=True)])
    best = df.loc[df["reward"].idxmax()]
    assert plan.meta["episode"] == best["episode"] and plan.counts(ctx.graph) == counts[int(best["episode"])]
    assert plan.meta["val_accuracy"] == best["val_accuracy"]
    # AMC's rewrite: every transition of episode e carries its final reward minus the baseline.
    T, buf = len(ctx.graph), searcher.model.replay_buffer
    adv = expected_advantages(df["reward"].to_numpy(), 1)
    assert np.allclose(buf.rewards[: 6 * T, 0], np.repeat(adv, T), atol=1e-6)
    assert buf.dones[: 6 * T, 0].reshape(6, T)[:, -1].all() and not buf.dones[: 6 * T, 0].reshape(6, T)[:, :-1].any()
    model = searcher.model  # separate learning rates through the _update_learning_rate hook
    assert model.actor.optimizer.param_groups[0]["lr"] == 1e-4 and model.critic.optimizer.param_groups[0]["lr"] == 1e-3
    assert (tmp_path / "run" / "ddpg" / "checkpoint.pkl").is_file()


@pytest.mark.parametrize("action_mode", ["ratio", "share"])
def test_warmup_episodes_play_random_search_plans(tiny_session, tmp_path, action_mode):
    ctx = make_ctx(tiny_session, tmp_path / "run")
    run(ctx, replay_episodes=10, episodes=4, warmup=4, warmup_sampling="budget", action_wall=True,
        repair_budget=False, action_mode=action_mode)  # the wall never binds on a plan in budget; no repair: the plans as drawn
    df = read_trials(tmp_path / "run" / "trials.parquet")
    counts = [[int(r[f"channels/{n}"]) for n in ctx.graph.names] for _, r in df.iterrows()]
    rng = np.random.default_rng(ctx.seed + 2)  # the random searcher's draw: uniform ratios scaled to the budget
    lo, hi = ctx.pruning.min_ratio, ctx.pruning.max_ratio
    assert counts == [ctx.counts(ctx.fit_to_budget(rng.uniform(lo, hi, size=len(ctx.graph)))) for _ in range(4)]


def test_with_fill_budget_every_episode_ends_at_the_budget(tiny_session, tmp_path):
    ctx = make_ctx(tiny_session, tmp_path / "run")
    run(ctx, replay_episodes=10, episodes=8, warmup=4, warmup_sampling="budget", fill_budget=True, action_wall=True)
    df = read_trials(tmp_path / "run" / "trials.parquet")
    top = ctx.counts([ctx.pruning.max_ratio] * len(ctx.graph))[-1]
    for _, r in df.iterrows():  # the last unit is at its maximum or could not grow by one channel
        c = [int(r[f"channels/{n}"]) for n in ctx.graph.names]
        assert ctx.budget.fits(c) and (c[-1] == top or not ctx.budget.fits(c[:-1] + [c[-1] + 1]))


def test_amc_preset_is_upper_wall_only_without_repair(tiny_session, tmp_path):
    ctx = make_ctx(tiny_session, tmp_path / "run")
    searcher, plan = run(ctx, replay_episodes=10, episodes=4, warmup=4, preset="amc")
    env = searcher.envs[0]
    assert searcher.model.warmup_policy is None and not env.fill_budget and not env.repair_budget and ctx.fits(plan)
    with pytest.raises(ConfigError, match="warmup_sampling"):
        DdpgSearcher.parse_options({"warmup_sampling": "gaussian"})


# The options before presets existed (AMC's published settings): preset amc must give exactly these.
OLD_DEFAULTS = {"episodes": 400, "warmup": 100, "warmup_sampling": "actions", "fill_budget": False, "sigma": 0.5,
                "sigma_decay": 0.95, "hidden": [300, 300], "actor_lr": 1e-4, "critic_lr": 1e-3, "tau": 0.01,
                "gamma": 1.0, "batch_size": 64, "replay_episodes": 100, "baseline_decay": 0.95, "reward": "acc",
                "reward_kwargs": {}, "parallel_episodes": 1, "checkpoint_every": 10, "tensorboard": False,
                "device": "cpu", "updates_per_transition": 1, "action_mode": "ratio",
                "group_features": False, "explore_best": 0.0}


def test_presets_amc_reproduces_the_old_defaults_and_autoprune_adds_the_repair():
    amc = dataclasses.asdict(DdpgSearcher.parse_options({"preset": "amc"}))
    assert amc == {**OLD_DEFAULTS, "preset": "amc", "repair_budget": False, "action_wall": True,
                   "sigma_min": 0.0}
    default = dataclasses.asdict(DdpgSearcher.parse_options({}))
    assert default == {**OLD_DEFAULTS, "preset": "autoprune", "repair_budget": True, "action_wall": False,
                       "sigma_min": 0.05, "explore_best": 0.5}
    assert dataclasses.asdict(DdpgSearcher.Options()) == default  # field defaults are the autoprune preset
    share = dataclasses.asdict(DdpgSearcher.parse_options({"preset": "share"}))  # the default of 2026-12-05
    assert share == {**default, "preset": "share", "sigma_min": 0.15, "sigma_decay": 0.98, "action_mode": "share",
                     "warmup_sampling": "budget"}
    with pytest.raises(ConfigError, match="preset"):
        DdpgSearcher.parse_options({"preset": "amc2"})


def test_explicit_options_override_the_preset():
    o = DdpgSearcher.parse_options({"preset": "amc", "repair_budget": True, "warmup": 4, "sigma_decay": 0.99})
    assert (o.preset, o.repair_budget, o.warmup, o.sigma_decay, o.fill_budget) == ("amc", True, 4, 0.99, False)
    o = DdpgSearcher.parse_options({"repair_budget": False, "fill_budget": True, "action_wall": True})
    assert (o.preset, o.repair_budget, o.fill_budget, o.warmup) == ("autoprune", False, True, 100)
    with pytest.raises(ConfigError, match="fill_budget is a wall: it needs action_wall: true"):
        DdpgSearcher.parse_options({"fill_budget": True})


@pytest.mark.parametrize("action_mode", ["ratio", "share"])
def test_default_preset_repairs_every_episode_and_the_best_plan_uses_the_budget(tiny_session, tmp_path, action_mode):
    ctx = make_ctx(tiny_session, tmp_path / "run")
    searcher, plan = run(ctx, replay_episodes=10, episodes=8, warmup=4,  # per-step uniform warm-up, then the agent
                         action_mode=action_mode)
    env, T, buf = searcher.envs[0], len(ctx.graph), searcher.model.replay_buffer
    assert not env.action_wall and env.repair_budget  # no wall: every episode is scaled to the budget
    assert env.action_mode == action_mode
    df = read_trials(tmp_path / "run" / "trials.parquet")
    for e, (_, r) in enumerate(df.iterrows()):  # every plan scored is maximal within the budget
        c = [int(r[f"channels/{n}"]) for n in ctx.graph.names]
        assert ctx.budget.fits(c)
        for t, cand in enumerate(env.candidates):
            higher = cand[cand > c[t]]
            assert not len(higher) or not ctx.budget.fits(c[:t] + [int(higher[0])] + c[t + 1:])
        obs, actions = env.trajectory(c)  # the stored transitions are those of the repaired plan
        assert np.allclose(buf.actions[e * T:(e + 1) * T, 0], actions)
        assert np.allclose(buf.observations[e * T:(e + 1) * T, 0], obs[:-1])
        assert np.allclose(buf.next_observations[e * T:(e + 1) * T, 0], obs[1:])
    fraction = tiny_session.budget.fraction
    assert (df["flops_kept"] <= fraction + 1e-9).all()
    assert plan.meta["flops_kept"] >= 0.95 * fraction  # on this task: maximal plans are within 5% of it


@pytest.mark.parametrize("updates", [1, 3])
def test_parallel_episodes_are_scored_in_batches_and_rewritten_per_env(tiny_session, tmp_path, updates):
    ctx = make_ctx(tiny_session, tmp_path / "run")
    searcher, plan = run(ctx, parallel_episodes=2, replay_episodes=10, updates_per_transition=updates)
    assert ctx.evaluator.batches == [2, 2, 2] and ctx.fits(plan)
    df = read_trials(tmp_path / "run" / "trials.parquet")
    assert list(df["episode"]) == list(range(6)) and list(df["warmup"]) == [True, True] + [False] * 4
    T, buf = len(ctx.graph), searcher.model.replay_buffer
    adv = expected_advantages(df["reward"].to_numpy(), 2).reshape(3, 2)  # rollout x env
    rows = buf.rewards[: 3 * T].reshape(3, T, 2)
    assert np.allclose(rows, adv[:, None, :], atol=1e-6)
    assert searcher.model._n_updates == updates * 2 * 2 * T  # `updates` gradient steps per transition after warm-up


@pytest.mark.parametrize("options", [{}, {"warmup": 4, "warmup_sampling": "budget", "fill_budget": True,
                                          "action_wall": True},
                                     {"warmup": 4, "warmup_sampling": "budget", "action_mode": "share",
                                      "updates_per_transition": 2, "group_features": True},
                                     {"explore_best": 0.5}],
                         ids=["amc", "budget-warmup-resumed-inside-warmup", "share-budget-warmup", "explore-best"])
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_session, tmp_path, options):
    whole = make_ctx(tiny_session, tmp_path / "whole")
    run(whole, **options)
    full = read_trials(tmp_path / "whole" / "trials.parquet")

    crashing = make_ctx(tiny_session, tmp_path / "cut", CountingEvaluator(tiny_session.evaluator(), crash_at=4))
    with pytest.raises(Crash):  # dies while scoring episode 3; the last checkpoint is at episode 2
        run(crashing, **options)
    assert list(read_trials(tmp_path / "cut" / "trials.parquet")["episode"]) == [0, 1, 2]

    resumed = make_ctx(tiny_session, tmp_path / "cut", resume=True)
    _, plan = run(resumed, **options)
    cut = read_trials(tmp_path / "cut" / "trials.parquet")
    assert list(cut["episode"]) == list(range(6)) and list(cut["index"]) == list(range(6))
    assert resumed.evaluator.batches == [1, 1, 1, 1]  # episodes 2..5 (episode 2's row was past the checkpoint)
    cols = ["reward", "val_accuracy"] + [c for c in full.columns if c.startswith("channels/")]
    pd.testing.assert_frame_equal(cut[cols], full[cols])
    assert resumed.fits(plan)

    again = make_ctx(tiny_session, tmp_path / "cut", resume=True)  # resuming a finished search: no new episode
    run(again, **options)
    assert again.evaluator.batches == [] and len(read_trials(tmp_path / "cut" / "trials.parquet")) == 6


def test_resume_with_another_observation_is_a_one_line_error(tiny_session, tmp_path):
    run(make_ctx(tiny_session, tmp_path / "run"), episodes=4)
    resumed = make_ctx(tiny_session, tmp_path / "run", resume=True)
    with pytest.raises(AutopruneError, match="group_features") as err:
        run(resumed, episodes=6, group_features=True)
    assert "\n" not in str(err.value)


def test_resume_with_other_search_options_is_a_one_line_error(tiny_session, tmp_path):
    """A run's config names only the options set explicitly: a default that changed between start and resume
    (or an option edited) must not slip in mid-search."""
    run(make_ctx(tiny_session, tmp_path / "run"), episodes=4, action_mode="share")
    resumed = make_ctx(tiny_session, tmp_path / "run", resume=True)
    with pytest.raises(AutopruneError, match="action_mode: share in the checkpoint, ratio now") as err:
        run(resumed, episodes=6)
    assert "\n" not in str(err.value)
    again = make_ctx(tiny_session, tmp_path / "run", resume=True)  # the same options (more episodes): resumes
    run(again, episodes=6, action_mode="share")
    assert len(read_trials(tmp_path / "run" / "trials.parquet")) == 6


def test_a_checkpoint_from_before_an_option_existed_resumes_only_with_its_old_value(tiny_session, tmp_path):
    import pickle

    run(make_ctx(tiny_session, tmp_path / "run"), episodes=4, explore_best=0.0)
    path = tmp_path / "run" / "ddpg" / "checkpoint.pkl"
    blob = pickle.loads(path.read_bytes())
    del blob["state"]["options"]["explore_best"]  # as written before the option existed
    path.write_bytes(pickle.dumps(blob))
    with pytest.raises(AutopruneError, match="explore_best: 0.0 in the checkpoint, 0.5 now"):
        run(make_ctx(tiny_session, tmp_path / "run", resume=True), episodes=6)
    run(make_ctx(tiny_session, tmp_path / "run", resume=True), episodes=6, explore_best=0.0)
    assert len(read_trials(tmp_path / "run" / "trials.parquet")) == 6


def test_resume_without_a_checkpoint_restarts_from_episode_0(tiny_session, tmp_path):
    crashing = make_ctx(tiny_session, tmp_path / "run", CountingEvaluator(tiny_session.evaluator(), crash_at=2))
    with pytest.raises(Crash):  # dies in episode 1, before the first checkpoint (after episode 2)
        run(crashing)
    assert not (tmp_path / "run" / "ddpg" / "checkpoint.pkl").exists()
    resumed = make_ctx(tiny_session, tmp_path / "run", resume=True)
    run(resumed, episodes=4)
    assert list(read_trials(tmp_path / "run" / "trials.parquet")["episode"]) == [0, 1, 2, 3]
    assert resumed.evaluator.batches == [1, 1, 1, 1]


def test_cli_search_with_ddpg_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    raw = tiny_config(searcher={"name": "ddpg"})
    code = main(["search", write_config(tmp_path, raw), "--set", "searcher.episodes=4", "--set", "searcher.warmup=2",
                 "--set", "searcher.hidden=[16,16]", "--set", "searcher.reward=acc_flops", "--out", str(out),
                 "--no-progress"])
    assert code == 0 and "searcher ddpg: 4 evaluations" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["searcher"] == "ddpg" and summary["pruned"]["flops_kept"] <= 0.5 + 1e-9
    trials = pd.read_parquet(out / "trials.parquet")
    assert list(trials["episode"]) == [0, 1, 2, 3] and {"sigma", "warmup", "reward"} <= set(trials.columns)
    assert json.loads((out / "best_plan.json").read_text())["meta"]["episode"] == trials["reward"].idxmax()


def test_cli_searcher_flag_keeps_set_overrides(tmp_path, monkeypatch):
    import autoprune.pipeline.run

    seen = {}

    def fake_run_search(cfg, **kwargs):
        seen["searcher"] = dict(cfg.searcher)
        raise Crash("stop before any work")

    monkeypatch.setattr(autoprune.pipeline.run, "run_search", fake_run_search)
    with pytest.raises(Crash):
        main(["search", write_config(tmp_path, tiny_config()), "--searcher", "ddpg", "--set", "searcher.episodes=4"])
    assert seen["searcher"] == {"name": "ddpg", "episodes": 4}


@pytest.mark.slow
def test_kill_9_then_resume_reaches_the_full_episode_count(tmp_path):
    raw = tiny_config(searcher={"name": "ddpg", "episodes": 40, "warmup": 5, "hidden": [16, 16],
                                "checkpoint_every": 3})
    cfg, out = write_config(tmp_path, raw), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "autoprune.cli", "search", cfg, "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "ddpg" / "checkpoint.pkl").exists() and len(read_trials(out / "trials.parquet")) >= 10:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(read_trials(out / "trials.parquet")) < 40
    resumed = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", "--resume", str(out), "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    trials = read_trials(out / "trials.parquet")
    assert list(trials["episode"]) == list(range(40))
    assert json.loads((out / "summary.json").read_text())["evaluations"] == 40
