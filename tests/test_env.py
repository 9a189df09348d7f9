"""The pruning MDP (autoprune.envs): checkers, action wall, observation, rewards, SB3 agents."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
from factories import TinyCNN, TinyConcat, TinyResidual
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from autoprune.core.cost import Budget, make_budget
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import resolve_count
from autoprune.envs import ENV_ID
from autoprune.envs.pruning_env import GROUP_FEATURES, OBS_FEATURES, ChannelPruningEnv
from autoprune.envs.rewards import REWARDS, Outcome, make_reward
from autoprune.errors import AutopruneError, BudgetError, ConfigError
from autoprune.models.zoo import build_model
from autoprune.search.evaluate import EvalResult


class ConstantEvaluator:
    """Scores every plan the same (the wall and the observation do not depend on accuracy)."""

    def __init__(self, accuracy: float = 0.5) -> None:
        self.accuracy, self.calls = accuracy, 0

    def evaluate(self, plan, finetune_steps=0):
        self.calls += 1
        return EvalResult(self.accuracy, 0.0)

    def evaluate_many(self, plans, finetune_steps=0):
        return [self.evaluate(p) for p in plans]


GRAPHS = {
    "cnn": build_unit_graph(TinyCNN(), (1, 8, 8)),
    "residual": build_unit_graph(TinyResidual(), (1, 8, 8)),
    "concat": build_unit_graph(TinyConcat(), (1, 8, 8)),
    "mnist_cnn": build_unit_graph(build_model("mnist_cnn", None, {"width": 12}, in_channels=1, num_classes=10), (1, 28, 28)),
}


class ToyLatency:
    """A latency-like cost model (kind 'latency'): a per-unit weighted sum plus a constant."""

    kind = "latency"

    def __init__(self, graph):
        self.weights = np.linspace(1.0, 3.0, len(graph))
        self._base = self(graph.channels)

    @property
    def base(self):
        return self._base

    def __call__(self, counts):
        return float(0.5 + self.weights @ np.asarray(counts, dtype=float))


def run_episode(env, actions):
    env.reset(seed=0)
    rewards, infos = [], []
    for a in actions:
        _obs, reward, terminated, truncated, info = env.step(np.array([a], dtype=np.float32))
        rewards.append(reward)
        infos.append(info)
        if terminated:
            break
    assert terminated and not truncated
    return rewards, infos


def test_env_passes_gymnasium_and_sb3_checkers(tiny_session):
    s = tiny_session
    env = ChannelPruningEnv(s.graph, s.evaluator(), s.budget, costs=s.costs)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    wrapped = gymnasium.make(ENV_ID, graph=s.graph, evaluator=s.evaluator(), budget=s.budget)
    gym_check_env(wrapped.unwrapped, skip_render_check=True)


def test_registered_with_a_lazy_string_entry_point():
    spec = gymnasium.spec(ENV_ID)
    assert spec.entry_point == "autoprune.envs.pruning_env:ChannelPruningEnv"
    g = GRAPHS["cnn"]
    env = gymnasium.make(ENV_ID, graph=g, evaluator=ConstantEvaluator(), budget=make_budget(g, "flops", 0.5))
    assert isinstance(env.unwrapped, ChannelPruningEnv)


def test_observation_is_amc_embedding():
    g = GRAPHS["mnist_cnn"]
    env = ChannelPruningEnv(g, ConstantEvaluator(), make_budget(g, "flops", 1.0))
    obs, _ = env.reset(seed=0)
    f = dict(zip(OBS_FEATURES, obs, strict=True))
    assert obs.dtype == np.float32 and obs.shape == (len(OBS_FEATURES),)
    assert f["index"] == 0 and f["flops_reduced"] == 0 and f["prev_ratio"] == 1.0
    assert f["unit_flops"] == pytest.approx(g.units[0].flops / env.flops.base, rel=1e-6)
    assert f["flops_rest"] == pytest.approx(sum(u.flops for u in g.units[1:]) / env.flops.base, rel=1e-6)
    obs2, *_ = env.step(np.array([-1.0], dtype=np.float32))  # prune unit 0 to min_ratio
    f2 = dict(zip(OBS_FEATURES, obs2, strict=True))
    counts = env.min_counts[:1] + g.channels[1:]
    assert f2["index"] == pytest.approx(1 / (len(g) - 1))
    assert f2["flops_reduced"] == pytest.approx(1 - env.flops(counts) / env.flops.base, rel=1e-5)
    assert f2["prev_ratio"] == pytest.approx(0.2)
    assert f2["flops_rest"] < f["flops_rest"]
    assert np.all((obs2 >= 0) & (obs2 <= 1))


def test_actions_map_to_ratio_range_without_budget_pressure():
    g = GRAPHS["cnn"]
    env = ChannelPruningEnv(g, ConstantEvaluator(), make_budget(g, "flops", 1.0), min_ratio=0.25, max_ratio=0.75)
    _, infos = run_episode(env, [-1.0, 1.0])
    assert [i["count"] for i in infos] == [2, 12]  # 0.25 * 8, 0.75 * 16
    assert not any(i["clipped"] for i in infos)
    assert infos[-1]["plan"].channels == {"conv1": 2, "conv2": 12}


@settings(max_examples=60, deadline=None)
@given(
    graph=st.sampled_from(sorted(GRAPHS)),
    kind=st.sampled_from(["flops", "params", "latency"]),
    fraction=st.floats(0.05, 1.0),
    min_ratio=st.sampled_from([0.1, 0.2, 0.3]),
    round_to=st.sampled_from([1, 2, 4]),
    actions=st.lists(st.floats(-1.0, 1.0), min_size=8, max_size=8),
    fill=st.booleans(),
)
def test_action_wall_never_lets_an_over_budget_plan_through(graph, kind, fraction, min_ratio, round_to, actions,
                                                            fill):
    g = GRAPHS[graph]
    cost = ToyLatency(g) if kind == "latency" else make_budget(g, kind, 1.0).cost
    budget = Budget(cost, fraction * cost.base)
    try:
        env = ChannelPruningEnv(g, ConstantEvaluator(), budget, min_ratio=min_ratio, round_to=round_to,
                                fill_budget=fill)
    except BudgetError:
        assume(False)
    _, infos = run_episode(env, actions[: len(g)])
    counts = infos[-1]["plan"].counts(g)
    assert budget.fits(counts)
    assert infos[-1]["costs"][kind] <= budget.target * (1 + 1e-9)
    for t, info in enumerate(infos):  # the walls are exact: they clip only as far as they must
        assert info["count"] in env.candidates[t]
        desired = resolve_count(env.action_to_ratio(actions[t]), g.units[t].out_channels, round_to)
        if info["count"] < desired:  # upper wall: one candidate more would make the budget unreachable
            higher = env.candidates[t][env.candidates[t] > info["count"]]
            assert len(higher)
            assert not budget.fits(counts[:t] + [int(higher[0])] + env.min_counts[t + 1:])
        elif info["count"] > desired:  # lower wall: one candidate less would leave budget unusable
            assert fill
            lower = env.candidates[t][env.candidates[t] < info["count"]]
            assert budget.fits(counts[:t] + [int(lower[-1])] + env.max_counts[t + 1:])
        assert info["clipped"] == (info["count"] != desired)
    if fill:  # the budget is used up: the last unit is at its maximum or could not grow by one candidate
        higher = env.candidates[-1][env.candidates[-1] > counts[-1]]
        assert not len(higher) or not budget.fits(counts[:-1] + [int(higher[0])])


def test_fill_budget_turns_all_minimum_actions_into_a_plan_at_the_budget():
    g = GRAPHS["cnn"]
    budget = make_budget(g, "flops", 0.5)
    plain = ChannelPruningEnv(g, ConstantEvaluator(), budget)
    filled = ChannelPruningEnv(g, ConstantEvaluator(), budget, fill_budget=True)
    low = run_episode(plain, [-1.0] * len(g))[1][-1]["costs"]["flops_kept"]
    high = run_episode(filled, [-1.0] * len(g))[1][-1]["costs"]["flops_kept"]
    assert low < 0.3 and 0.4 < high <= 0.5 + 1e-9


@pytest.mark.parametrize("name", ["cnn", "residual", "concat", "mnist_cnn"])
@pytest.mark.parametrize("action", [-1.0, -0.6, 0.0])
def test_repair_budget_scales_the_episode_up_to_a_maximal_plan_within_budget(name, action):
    g = GRAPHS[name]
    budget = make_budget(g, "flops", 0.5)
    plain = ChannelPruningEnv(g, ConstantEvaluator(), budget)
    repaired = ChannelPruningEnv(g, ConstantEvaluator(), budget, repair_budget=True)
    before = run_episode(plain, [action] * len(g))[1][-1]["plan"].counts(g)
    infos = run_episode(repaired, [action] * len(g))[1]
    after = infos[-1]["plan"].counts(g)
    assert budget.fits(after) and all(a >= b for a, b in zip(after, before, strict=True))
    assert infos[-1]["repaired"] == (after != before)
    for t, cand in enumerate(repaired.candidates):  # maximal: no unit can grow by one candidate count
        higher = cand[cand > after[t]]
        assert not len(higher) or not budget.fits(after[:t] + [int(higher[0])] + after[t + 1:])
    # the trajectory that leads to the repaired plan: its actions resolve to the repaired counts
    obs, actions = repaired.trajectory(after)
    assert obs.shape == (len(g) + 1, len(OBS_FEATURES)) and actions.shape == (len(g), 1)
    replay = ChannelPruningEnv(g, ConstantEvaluator(), budget)
    first, _ = replay.reset(seed=0)
    assert np.allclose(first, obs[0])
    for t, a in enumerate(actions):
        o, _r, _te, _tr, info = replay.step(a)
        assert info["count"] == after[t] and np.allclose(o, obs[t + 1])


@pytest.mark.parametrize("name", ["cnn", "residual", "concat", "mnist_cnn"])
@pytest.mark.parametrize("actions", [[1.0], [0.6, -0.4, 1.0, 0.2], [-1.0]], ids=["max", "mixed", "min"])
def test_without_the_wall_the_episode_is_scaled_to_the_budget_keeping_its_shape(name, actions):
    """``action_wall=False``: nothing is clipped during the episode; the chosen ratios are scaled (down
    or up) as the random searcher scales a draw, and the plan is maximal within the budget."""
    g = GRAPHS[name]
    budget = make_budget(g, "flops", 0.4)
    env = ChannelPruningEnv(g, ConstantEvaluator(), budget, action_wall=False)
    steps = [actions[t % len(actions)] for t in range(len(g))]
    infos = run_episode(env, steps)[1]
    assert not any(i["clipped"] for i in infos) and env.repair_budget
    chosen = [i["count"] for i in infos]
    after = infos[-1]["plan"].counts(g)
    assert after == env.fit(chosen) and budget.fits(after) and infos[-1]["repaired"] == (after != chosen)
    for t, cand in enumerate(env.candidates):  # maximal: no unit can grow by one candidate count
        higher = cand[cand > after[t]]
        assert not len(higher) or not budget.fits(after[:t] + [int(higher[0])] + after[t + 1:])
    if not budget.fits(chosen):  # scaled down: every unit cut by the same factor, up to rounding and clipping
        ratios = np.array(chosen) / np.array(g.channels)
        kept = np.array(after) / np.array(g.channels)
        top = ratios >= ratios.max() - 1e-9
        assert (kept[top] <= ratios[top] + 1e-9).all()
    walled = run_episode(ChannelPruningEnv(g, ConstantEvaluator(), budget), steps)[1]  # the wall clips instead
    assert budget.fits(walled[-1]["plan"].counts(g))


def test_group_features_tell_a_residual_stream_from_an_inner_conv():
    """``group_features=True`` appends the coupled-layer count and the params share; the AMC features
    come first, unchanged, and trajectories carry the longer observation too."""
    g = GRAPHS["residual"]
    budget = make_budget(g, "flops", 0.5)
    plain = ChannelPruningEnv(g, ConstantEvaluator(), budget)
    env = ChannelPruningEnv(g, ConstantEvaluator(), budget, group_features=True)
    assert env.features == OBS_FEATURES + GROUP_FEATURES and env.observation_space.shape == (len(env.features),)
    gymnasium.utils.env_checker.check_env(env, skip_render_check=True)
    members = [len(u.members) for u in g.units]
    assert max(members) > min(members)  # the tiny residual net has a stream and an inner conv
    obs, actions = env.trajectory(g.channels)
    base, _ = plain.trajectory(g.channels)
    assert np.allclose(obs[:, : len(OBS_FEATURES)], base)
    for t, u in enumerate(g.units):
        f = dict(zip(env.features, obs[t], strict=True))
        assert f["members"] == pytest.approx(len(u.members) / max(members))
        assert f["unit_params"] == pytest.approx(u.params / sum(v.params for v in g.units), rel=1e-5)


@pytest.mark.parametrize("name", ["cnn", "residual", "mnist_cnn"])
@pytest.mark.parametrize("kind", ["flops", "params", "latency"])
def test_share_actions_are_read_against_the_fair_share_of_the_budget_left(name, kind):
    """``action_mode="share"``: action 0 at every step is each unit's fair share of what is left, so
    an all-zero episode is uniform shrinking at the budget; -1 and +1 are the ratio range's ends; the
    share follows the earlier units' choices (a unit that takes more leaves less), for any cost model."""
    g = GRAPHS[name]
    cost = ToyLatency(g) if kind == "latency" else make_budget(g, kind, 1.0).cost
    budget = Budget(cost, 0.4 * cost.base)
    env = ChannelPruningEnv(g, ConstantEvaluator(), budget, action_wall=False, action_mode="share", min_ratio=0.1)
    env.reset(seed=0)
    share0 = env.fair_share(0, [])
    assert 0.1 < share0 < 1.0
    assert env.action_to_ratio([0.0], share0) == pytest.approx(share0)
    assert env.action_to_ratio([-1.0], share0) == pytest.approx(0.1)
    assert env.action_to_ratio([1.0], share0) == pytest.approx(1.0)
    for x in (-0.7, -0.2, 0.0, 0.3, 0.9):  # the inverse map
        assert env.ratio_to_action(env.action_to_ratio([x], share0), share0)[0] == pytest.approx(x, abs=1e-6)
    if len(g) > 1:  # taking more now leaves a smaller share to the next unit
        big = [g.units[0].out_channels]
        small = [resolve_count(0.1, g.units[0].out_channels, 1)]
        assert env.fair_share(1, big) < env.fair_share(1, small)
    infos = run_episode(env, [0.0] * len(g))[1]
    counts = infos[-1]["plan"].counts(g)
    assert budget.fits(counts) and budget.cost(counts) / budget.cost.base > 0.3
    ratios = np.array(counts) / np.array(g.channels)
    assert ratios.max() - ratios.min() < 0.25  # about uniform (rounding of small layers aside)
    obs, actions = env.trajectory(counts)  # what the agent stores: actions that replay the plan
    replay = ChannelPruningEnv(g, ConstantEvaluator(), budget, action_wall=False, action_mode="share", min_ratio=0.1)
    replayed = run_episode(replay, [float(a[0]) for a in actions])[1]
    assert replayed[-1]["plan"].counts(g) == counts
    assert ChannelPruningEnv(g, ConstantEvaluator(), budget).fair_share(0, []) is None  # ratio mode


def test_share_actions_under_uniform_random_play_spread_around_uniform_not_lopsided():
    """The failure share actions avoid: with ratio actions and AMC's wall, uniform random actions at an
    aggressive budget spend it on the first units and crush the last ones to the minimum."""
    g = GRAPHS["mnist_cnn"]
    budget = make_budget(g, "flops", 0.2)
    rng = np.random.default_rng(0)
    last = {"share": [], "ratio": []}
    for mode in last:
        env = ChannelPruningEnv(g, ConstantEvaluator(), budget, action_wall=True, action_mode=mode, min_ratio=0.1)
        for _ in range(30):
            infos = run_episode(env, rng.uniform(-1, 1, len(g)))[1]
            last[mode].append(infos[-1]["plan"].counts(g)[-1] / g.channels[-1])
    assert np.mean(last["share"]) > np.mean(last["ratio"]) + 0.05


def test_centred_actions_start_at_the_share_with_the_same_slope_both_ways():
    """``action_mode="centred"``: 0 is the fair share (an all-zero episode is uniform shrinking at the
    budget), one unit of action moves the ratio by half the ratio range up or down, clipped to it."""
    g = GRAPHS["residual"]
    budget = make_budget(g, "flops", 0.15)
    env = ChannelPruningEnv(g, ConstantEvaluator(), budget, action_wall=False, action_mode="centred", min_ratio=0.1)
    env.reset(seed=0)
    share = env.fair_share(0, [])
    assert share == pytest.approx(ChannelPruningEnv(g, ConstantEvaluator(), budget, action_mode="share",
                                                     min_ratio=0.1).fair_share(0, []))
    assert env.action_to_ratio([0.0], share) == pytest.approx(share)
    up, down = env.action_to_ratio([0.1], share) - share, share - env.action_to_ratio([-0.1], share)
    assert up == pytest.approx(0.045) and down == pytest.approx(0.045)  # (1.0 - 0.1) / 2 per unit of action
    assert env.action_to_ratio([-1.0], share) == pytest.approx(0.1)  # clipped to min_ratio
    assert env.action_to_ratio([1.0], share) == pytest.approx(min(1.0, share + 0.45))
    for x in (-0.1, 0.0, 0.2, 0.5):
        assert env.ratio_to_action(env.action_to_ratio([x], share), share)[0] == pytest.approx(x, abs=1e-6)
    counts = run_episode(env, [0.0] * len(g))[1][-1]["plan"].counts(g)
    assert budget.fits(counts) and budget.cost(counts) / budget.cost.base > 0.1


def test_action_mode_is_checked():
    g = GRAPHS["cnn"]
    with pytest.raises(ConfigError, match="action_mode"):
        ChannelPruningEnv(g, ConstantEvaluator(), make_budget(g, "flops", 0.5), action_mode="relative")


def test_unreachable_budget_is_a_budget_error():
    g = GRAPHS["cnn"]
    with pytest.raises(BudgetError, match="below the minimum reachable"):
        ChannelPruningEnv(g, ConstantEvaluator(), make_budget(g, "flops", 0.01))


def test_same_seed_and_actions_give_same_rewards(tiny_session):
    s = tiny_session
    actions = np.random.default_rng(3).uniform(-1, 1, len(s.graph))
    envs = [ChannelPruningEnv(s.graph, s.evaluator(), s.budget, reward="acc_flops", costs=s.costs) for _ in range(2)]
    (ra, ia), (rb, ib) = run_episode(envs[0], actions), run_episode(envs[1], actions)
    assert ra == rb and ra[-1] != 0 and all(r == 0 for r in ra[:-1])
    assert ia[-1]["plan"].channels == ib[-1]["plan"].channels
    assert not ia[-1]["result"].cached and not ib[-1]["result"].cached  # each scored for real
    again, info = run_episode(envs[0], actions)
    assert again == ra and info[-1]["result"].cached  # the evaluator's cache: scored once
    assert ia[-1]["accuracy"] == ia[-1]["result"].accuracy
    assert ra[-1] == pytest.approx(-(1 - ia[-1]["accuracy"]) * math.log(ia[-1]["costs"]["flops"]))


def test_deferred_evaluation_returns_the_plan_and_reward_of_matches(tiny_session):
    s = tiny_session
    actions = [0.3] * len(s.graph)
    deferred = ChannelPruningEnv(s.graph, ConstantEvaluator(0.7), s.budget, defer_evaluation=True)
    eager = ChannelPruningEnv(s.graph, ConstantEvaluator(0.7), s.budget)
    (rd, infos_d), (re_, _) = run_episode(deferred, actions), run_episode(eager, actions)
    assert rd[-1] == 0.0 and "accuracy" not in infos_d[-1] and deferred.evaluator.calls == 0
    assert deferred.reward_of(infos_d[-1]["plan"], 0.7) == pytest.approx(re_[-1]) == pytest.approx(-0.3)


def test_reward_functions_on_known_numbers():
    o = Outcome(0.9, costs={"flops": math.e**2, "params": math.e**3, "latency": math.e},
                kept={"flops": 0.5, "params": 0.25, "latency": 0.8}, budget_kind="flops")
    assert REWARDS.get("acc")(o) == pytest.approx(-0.1)
    assert REWARDS.get("acc_flops")(o) == pytest.approx(-0.2)
    assert REWARDS.get("acc_params")(o) == pytest.approx(-0.3)
    assert REWARDS.get("acc_latency")(o) == pytest.approx(-0.1)
    assert REWARDS.get("blend")(o) == pytest.approx(0.9 - 0.5 * 0.5)
    assert make_reward("blend", {"weight": 1.0, "cost": "params"})(o) == pytest.approx(0.65)
    with pytest.raises(ConfigError, match="latency"):
        REWARDS.get("acc_latency")(Outcome(0.9, costs={"flops": 10.0}, kept={"flops": 1.0}))
    with pytest.raises(ConfigError, match="reward_kwargs"):
        make_reward("blend", {"wieght": 1.0})
    with pytest.raises(AutopruneError, match="unknown reward"):
        make_reward("acc_flop")


def test_user_registered_reward_and_latency_cost_model_work_without_special_case():
    g = GRAPHS["residual"]
    if "kept_only" not in REWARDS:
        REWARDS.register("kept_only", lambda outcome, scale=1.0: -scale * outcome.kept["latency"])
    lat = ToyLatency(g)
    budget = Budget(lat, 0.5 * lat.base)
    env = ChannelPruningEnv(g, ConstantEvaluator(), budget, reward="kept_only", reward_kwargs={"scale": 2.0},
                            costs={"latency": lat})
    rewards, infos = run_episode(env, [1.0] * len(g))
    assert budget.fits(infos[-1]["plan"].counts(g))
    assert rewards[-1] == pytest.approx(-2.0 * infos[-1]["costs"]["latency_kept"])
    assert any(i["clipped"] for i in infos)  # asking for everything at 50% latency must hit the wall
    with pytest.raises(ConfigError, match="latency"):  # no latency cost model: fails at construction
        ChannelPruningEnv(g, ConstantEvaluator(), make_budget(g, "flops", 0.5), reward="acc_latency")


def test_td3_learns_on_the_env(tiny_session):
    from stable_baselines3 import TD3
    from stable_baselines3.common.callbacks import BaseCallback

    s = tiny_session
    env = ChannelPruningEnv(s.graph, s.evaluator(), s.budget, costs=s.costs)
    T = len(s.graph)
    finished = []

    class Collect(BaseCallback):
        def _on_step(self):
            finished.extend(i for i, d in zip(self.locals["infos"], self.locals["dones"], strict=True) if d)
            return True

    model = TD3("MlpPolicy", env, learning_starts=2 * T, train_freq=(1, "episode"), batch_size=8,
                policy_kwargs={"net_arch": [16, 16]}, seed=0, device="cpu")
    model.learn(5 * T, callback=Collect())
    assert len(finished) == 5 and model._n_updates > 0
    for info in finished:
        assert s.budget.fits(info["plan"].counts(s.graph)) and math.isfinite(info["episode_reward"])


def test_a_latency_budget_whose_min_ratio_plan_runs_slower_than_the_base_points_at_round_to():
    """Runtimes whose kernels favour multiples of 4/8/16 can time odd small widths slower than the
    base: the error then says so and names pruning.round_to (FLOPs budgets never say it)."""
    from autoprune.core.cost import Budget

    class Misaligned:  # smallest widths cheap, min_ratio widths slower than the base
        kind, base = "latency", 1.0

        def __call__(self, counts):
            return 0.5 if counts == [1] else 1.2

    with pytest.raises(BudgetError, match=r"1\.2 of the base .* run slower than the base's .* pruning\.round_to"):
        Budget(Misaligned(), 0.9).check_reachable([3], floor_counts=[1])
    g = GRAPHS["cnn"]
    with pytest.raises(BudgetError) as err:
        ChannelPruningEnv(g, ConstantEvaluator(), make_budget(g, "flops", 0.01))
    assert "round_to" not in str(err.value)
