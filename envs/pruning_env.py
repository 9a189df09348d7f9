"""AMC's layer-by-layer pruning MDP as a Gymnasium environment.

One episode visits every prunable unit of a :class:`~autoprune.graph.UnitGraph` in graph order;
the action at step ``t`` is unit ``t``'s preserve ratio. The last step resolves the chosen
channel counts into a :class:`~autoprune.plan.PruningPlan`, scores it with the evaluator
(prune for real, adaptive BN, search-validation accuracy; identical plans are cached by the
evaluator) and returns the episode reward. Every intermediate reward is 0.

**Action.** A float32 ``Box(-1, 1, (1,))`` (the range SB3's off-policy agents expect), rescaled
linearly to a preserve ratio in ``[min_ratio, max_ratio]`` and resolved to a channel count
(rounded to ``round_to``).

**Share actions** (``action_mode="share"``, an addition to AMC): the action is read relative to the
unit's *fair share* of the budget left: the preserve ratio that, given to this unit and every later
one, uses the budget exactly with the earlier units at their chosen counts. Action 0 is that share,
-1 ``min_ratio`` and +1 ``max_ratio`` (piecewise linear between). The budget is then tracked as the
episode goes (a unit that takes more leaves a smaller share to the later ones, and the actions of
later units say so), uniform random actions give plans spread around uniform shrinking, and the last
unit's share is what is left. With plain ratio actions and the end-of-episode scaling below, nothing
during the episode says what an action costs the other units: at 50% FLOPs of a ResNet-20 the agent
drove its last three units to ``max_ratio`` and the scaling took their channels from the earlier
units. Measured (docs/amc.md): better there (with a wider noise floor, the first setting at or above
random search at 50% and 25%); on a ResNet-56 at 15% FLOPs only with random-search warm-up plans,
with which it is the ``ddpg`` searcher's default since 2026-12-05 (the env's default stays AMC's).

**Centred actions** (``action_mode="centred"``, experimental): action 0 is the fair share as above,
but the slope is ratio mode's on both sides (``(max_ratio - min_ratio) / 2`` per unit of action),
clipped to ``[min_ratio, max_ratio]``. Share actions span ``share - min_ratio`` below and
``max_ratio - share`` above, which at an aggressive budget (share 0.32 at 10% FLOPs, ``min_ratio``
0.2) makes the same exploration noise move a unit up five times as far as down.

**Action wall** (AMC): the count is lowered, if needed, to the largest candidate count for which
the budget can still be met with every later unit at ``min_ratio``. The check is exact: the
budget's own cost model prices the vector (earlier units at their chosen counts, this unit at the
candidate, later units at their minimum counts), so it works for any cost model (FLOPs, params,
latency) without a special case. Because the minimum count always passes (it is the vector that
passed at the previous step), the final plan always meets the budget.

**Budget fill** (``fill_budget=True``, an addition to AMC): the count is also raised, if needed,
to the smallest candidate for which the budget can still be used up with every later unit at
``max_ratio``. With both walls every episode ends close to the budget, so no episode is spent on
a plan that leaves budget unused (under an accuracy reward such a plan can only be worse).
Leave it off with a reward that pays for cutting below the budget (``acc_flops``, ``blend``).

**Budget repair** (``repair_budget=True``, an addition to AMC): at the last step the episode's
preserve-ratio vector (the counts as chosen, divided by the channels) is scaled up by the
largest factor whose clipped, rounded plan still meets the budget (what the ``random`` searcher's
``fit_to_budget`` does to its draws), so the plan keeps its shape (which units are pruned harder)
and uses the budget fully; what rounding leaves goes to single units, last unit first, until no
unit can grow by one count. The repaired counts become the episode's counts: the plan scored is
the repaired one, and :meth:`trajectory` gives the observations and actions that lead to it (the
``ddpg`` searcher writes them into its replay buffer, so the agent learns from what was scored).
The last step's ``info`` has ``repaired`` (whether any count changed). Leave it off with a reward
that pays for cutting below the budget.

**Budget scaling instead of the wall** (``action_wall=False``, an addition to AMC): no count is
clipped during the episode; at the last step the chosen ratio vector is scaled, down or up, by the
largest factor whose clipped, rounded plan meets the budget, and what rounding leaves is filled as
in the repair above (:meth:`fit`). This is exactly how the ``random`` searcher turns a draw into a
plan, so a warm-up episode of uniform per-step actions *is* a random-search sample, and the agent
learns which units to prune harder (the plan's shape) rather than fighting the wall: with the wall,
per-step uniform actions spend an aggressive budget on the first units and the wall crushes the
last ones to ``min_ratio`` (ResNet-56 at 15% FLOPs: warm-up plans scored 0.30 where random search's
scored 0.48 on average, ``benchmarks/results/search_quality_hard.md``). The fitted counts become the
episode's counts, as with the repair (``info["repaired"]``).

**Observation** (AMC's embedding, float32 ``Box(0, 1, (12,))``): unit index, kind (conv 0,
depthwise 0.5, linear 1), in channels, out channels, kernel, stride, input H, input W (each
divided by its maximum over units), this unit's FLOPs, FLOPs already removed, FLOPs of the
units still to come (fractions of the base model's FLOPs) and the previous preserve ratio
(1.0 at the first step). With ``group_features=True`` two more (``GROUP_FEATURES``): how many
layers the unit's channels couple (a residual stream couples every block's output conv; divided by
the most of any unit) and the unit's share of the params. AMC prunes single layers, so its embedding
cannot tell a stream from a block's inner conv of the same shape; on the ResNet-20 task the stage-3
stream is the most sensitive unit and the two inner convs after it among the least, yet they share
every AMC feature but the index, the FLOPs and the previous action. Measured there: no better
(docs/amc.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from autoprune.core.budget_fit import BudgetFitter
from autoprune.core.cost import Budget, CostModel, FlopsCost, ParamsCost
from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan, resolve_count
from autoprune.envs.rewards import Outcome, RewardFn, make_reward
from autoprune.errors import ConfigError

ACTION_MODES = ("ratio", "share", "centred")
KIND_CODE = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}
OBS_FEATURES = ("index", "kind", "in_channels", "out_channels", "kernel", "stride", "in_h", "in_w",
                "unit_flops", "flops_reduced", "flops_rest", "prev_ratio")
GROUP_FEATURES = ("members", "unit_params")
"""Appended with ``group_features=True``: the unit's coupled layers (divided by the most of any unit)
and its share of the prunable params."""


class ChannelPruningEnv(gym.Env):
    """The pruning MDP over one model's prunable units.

    :param graph: the model's unit graph (units in the order they are visited).
    :param evaluator: scores plans: anything with ``evaluate(plan)`` returning an object with
        ``.accuracy`` (an :class:`~autoprune.evaluate.Evaluator` or a Ray pool).
    :param budget: the budget to meet; its cost model drives the action wall.
    :param reward: a reward name from :data:`autoprune.envs.rewards.REWARDS` or a callable
        ``fn(outcome, **reward_kwargs) -> float``.
    :param reward_kwargs: parameters bound to the reward function.
    :param min_ratio: smallest preserve ratio of a unit.
    :param max_ratio: largest preserve ratio of a unit.
    :param round_to: kept channel counts are rounded to a multiple of this.
    :param costs: cost models by kind, reported in ``info`` and given to the reward; the
        ``flops`` one also builds the observation. Defaults to FLOPs, params and the budget's.
    :param fill_budget: also apply the lower wall described above.
    :param repair_budget: scale the finished episode's ratios up to use the budget (above).
    :param action_wall: clip each step's count to keep the budget reachable (AMC); ``False``:
        scale the finished episode's ratios to the budget instead (above; implies the repair).
    :param action_mode: ``ratio`` (AMC: the action maps linearly to a preserve ratio), ``share``
        (relative to the unit's fair share of the budget left, above) or ``centred`` (the share with
        ratio mode's slope).
    :param group_features: append ``GROUP_FEATURES`` to the observation (above).
    :param defer_evaluation: if true, the last step does not evaluate: it returns reward 0 and
        the plan in ``info`` for the caller to score in a batch (see :meth:`reward_of`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        graph: UnitGraph,
        evaluator: Any,
        budget: Budget,
        *,
        reward: str | RewardFn = "acc",
        reward_kwargs: Mapping[str, Any] | None = None,
        min_ratio: float = 0.2,
        max_ratio: float = 1.0,
        round_to: int = 1,
        costs: Mapping[str, CostModel] | None = None,
        defer_evaluation: bool = False,
        fill_budget: bool = False,
        repair_budget: bool = False,
        action_wall: bool = True,
        action_mode: str = "ratio",
        group_features: bool = False,
    ) -> None:
        if not 0 < min_ratio <= max_ratio <= 1:
            raise ConfigError(f"need 0 < min_ratio <= max_ratio <= 1 (got {min_ratio}, {max_ratio})")
        if isinstance(round_to, str) or round_to < 1:  # pruning.round_to: auto is resolved by autoprune.prepare
            raise ConfigError(f"round_to must be an integer >= 1 (got {round_to!r}; pruning.round_to auto: pass "
                              "session.cfg.pruning.round_to, what autoprune.prepare resolved it to)")
        if action_mode not in ACTION_MODES:
            raise ConfigError(f"action_mode must be one of {', '.join(ACTION_MODES)} (got {action_mode!r})")
        self.action_mode = action_mode
        self.graph, self.evaluator, self.budget = graph, evaluator, budget
        self.min_ratio, self.max_ratio, self.round_to = float(min_ratio), float(max_ratio), int(round_to)
        self.defer_evaluation, self.fill_budget = defer_evaluation, bool(fill_budget)
        self.action_wall = bool(action_wall)
        self.repair_budget = bool(repair_budget) or not self.action_wall
        costs = dict(costs or {})
        costs.setdefault("flops", FlopsCost(graph))
        costs.setdefault("params", ParamsCost(graph))
        costs.setdefault(budget.kind, budget.cost)
        self.costs = costs
        self.flops = costs["flops"]
        self.reward_fn = make_reward(reward, reward_kwargs)
        self.n_units = len(graph)
        self.fitter = BudgetFitter(graph, budget, min_ratio, max_ratio, round_to)
        self.min_counts, self.max_counts = self.fitter.min_counts, self.fitter.max_counts
        self.candidates = self.fitter.candidates
        budget.check_reachable(self.min_counts)
        self.reward_fn(self.outcome(self.min_counts, 1.0))  # fail now if the reward lacks a cost model
        self.group_features = bool(group_features)
        self._static = self._static_features()
        self.features = OBS_FEATURES + (GROUP_FEATURES if self.group_features else ())
        self.observation_space = gym.spaces.Box(0.0, 1.0, (len(self.features),), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self._t: int | None = None
        self._counts: list[int] = []
        self._ratios: list[float] = []

    # ------------------------------------------------------------------------------- setup
    def _static_features(self) -> np.ndarray:
        units = self.graph.units
        n = len(units)
        cols = np.array([[u.in_channels, u.out_channels, u.kernel, u.stride, u.in_h, u.in_w] for u in units],
                        dtype=np.float64)
        cols = cols / np.maximum(cols.max(axis=0), 1e-12)
        index = np.arange(n, dtype=np.float64) / max(n - 1, 1)
        kind = np.array([KIND_CODE.get(u.kind, 0.0) for u in units])
        unit_flops = np.array([u.flops for u in units], dtype=np.float64) / max(self.flops.base, 1e-12)
        rest = np.array([sum(u.flops for u in units[i + 1:]) for i in range(n)], dtype=np.float64)
        rest = rest / max(self.flops.base, 1e-12)
        members = np.array([max(len(u.members), 1) for u in units], dtype=np.float64)
        params = np.array([u.params for u in units], dtype=np.float64)
        group = np.column_stack([members / members.max(), params / max(params.sum(), 1e-12)])
        return np.column_stack([index, kind, cols, unit_flops, rest, group])

    # ------------------------------------------------------------------------------ the MDP
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t, self._counts, self._ratios = 0, [], []
        return self._observation(), {}

    def step(self, action):
        if self._t is None or self._t >= self.n_units:
            raise RuntimeError("call reset() before step() (the episode is over)")
        t = self._t
        ratio = self.action_to_ratio(action, self.fair_share(t, self._counts))
        unit = self.graph.units[t]
        count = resolve_count(ratio, unit.out_channels, unit.step(self.round_to))
        count, clipped = self.wall(t, count) if self.action_wall else (count, False)
        if clipped:
            ratio = count / self.graph.units[t].out_channels
        self._counts.append(count)
        self._ratios.append(ratio)
        self._t = t + 1
        info: dict[str, Any] = {"unit": self.graph.units[t].name, "ratio": ratio, "count": count,
                                "clipped": clipped}
        terminated = self._t == self.n_units
        reward = 0.0
        if terminated:
            reward = self._finish(info)
        return self._observation(), reward, terminated, False, info

    def _finish(self, info: dict[str, Any]) -> float:
        if self.repair_budget:
            counts = self.repair(self._counts) if self.action_wall else self.fit(self._counts)
            info["repaired"] = counts != self._counts
            if info["repaired"]:
                self._counts = counts
                self._ratios = [c / u.out_channels for c, u in zip(counts, self.graph.units, strict=True)]
        plan = self.plan()
        info.update(plan=plan, costs=self.describe(self._counts))
        if self.defer_evaluation:
            return 0.0
        result = self.evaluator.evaluate(plan)
        reward = self.reward_of(self._counts, result.accuracy)
        info.update(accuracy=result.accuracy, result=result, episode_reward=reward)
        return reward

    # ----------------------------------------------------------------------------- helpers
    def action_to_ratio(self, action, share: float | None = None) -> float:
        """Map an action in [-1, 1] (clipped) to a ratio in [min_ratio, max_ratio]: linearly, or with
        ``share`` (``action_mode="share"``: :meth:`fair_share`) piecewise linearly, 0 -> ``share``."""
        x = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        if share is None:
            return self.min_ratio + (x + 1.0) / 2.0 * (self.max_ratio - self.min_ratio)
        if self.action_mode == "centred":
            return float(np.clip(share + x * (self.max_ratio - self.min_ratio) / 2.0, self.min_ratio, self.max_ratio))
        end = self.max_ratio if x >= 0 else self.min_ratio
        return float(share + abs(x) * (end - share))

    def ratio_to_action(self, ratio: float, share: float | None = None) -> np.ndarray:
        """The action that :meth:`action_to_ratio` maps to ``ratio`` (the inverse map)."""
        ratio = float(np.clip(ratio, self.min_ratio, self.max_ratio))
        if share is None:
            span = self.max_ratio - self.min_ratio
            x = 0.0 if span <= 0 else 2.0 * (ratio - self.min_ratio) / span - 1.0
        elif self.action_mode == "centred":
            half = (self.max_ratio - self.min_ratio) / 2.0
            x = 0.0 if half <= 0 else (ratio - share) / half
        else:
            end = self.max_ratio if ratio >= share else self.min_ratio
            x = 0.0 if end == share else (ratio - share) / (end - share) * (1.0 if ratio >= share else -1.0)
        return np.array([np.clip(x, -1.0, 1.0)], dtype=np.float32)

    def action_for(self, ratio: float) -> np.ndarray:
        """The action that gives ``ratio`` at the current step (in either action mode)."""
        t = self.unit_index
        return self.ratio_to_action(ratio, self.fair_share(t, self._counts))

    def fair_share(self, t: int, counts: Sequence[int], iters: int = 30) -> float | None:
        """``action_mode="share"`` or ``"centred"``: the largest ratio that units ``t`` onwards can all
        keep with the budget met, the first ``t`` units at ``counts`` (:meth:`BudgetFitter.fair_share`);
        None in ``ratio`` mode."""
        return self.fitter.fair_share(t, counts, iters) if self.action_mode != "ratio" else None

    @property
    def unit_index(self) -> int:
        """The unit the next step decides (0 right after ``reset``)."""
        return self._t or 0

    def wall(self, t: int, desired: int) -> tuple[int, bool]:
        """The walls on unit ``t``'s count after this episode's earlier counts (upper: AMC's; lower
        with ``fill_budget``): :meth:`BudgetFitter.wall`. Returns (count, clipped)."""
        return self.fitter.wall(t, self._counts, desired, self.fill_budget)

    def repair(self, counts: Sequence[int], iters: int = 40) -> list[int]:
        """Scale ``counts`` up to use the budget, never shrinking one: :meth:`BudgetFitter.repair`."""
        return self.fitter.repair(counts, iters)

    def fit(self, counts: Sequence[int], iters: int = 40) -> list[int]:
        """Scale ``counts`` down or up to meet and use the budget: :meth:`BudgetFitter.fit`."""
        return self.fitter.fit(counts, iters)

    def trajectory(self, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Observations (T + 1, 12: before each step, then the terminal one) and actions (T, 1)
        of an episode that chose ``counts`` (actions aim at each count's ratio)."""
        units = self.graph.units
        ratios = [c / u.out_channels for c, u in zip(counts, units, strict=True)]
        obs = [self._observation_at(t, list(counts[:t]), ratios[t - 1] if t else 1.0) for t in range(self.n_units + 1)]
        actions = np.stack([self.ratio_to_action(r, self.fair_share(t, counts)) for t, r in enumerate(ratios)])
        return np.stack(obs), actions

    def plan(self) -> PruningPlan:
        """The plan chosen so far (complete once the episode has terminated)."""
        counts = self._counts + [u.out_channels for u in self.graph.units[len(self._counts):]]
        plan = PruningPlan.from_counts(self.graph, counts)
        plan.ratios.update(dict(zip(self.graph.names, self._ratios, strict=False)))
        return plan

    def describe(self, counts: Sequence[int]) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, model in self.costs.items():
            out[kind] = float(model(counts))
            out[f"{kind}_kept"] = out[kind] / model.base
        return out

    def outcome(self, counts: Sequence[int], accuracy: float) -> Outcome:
        costs = {kind: float(model(counts)) for kind, model in self.costs.items()}
        kept = {kind: costs[kind] / model.base for kind, model in self.costs.items()}
        return Outcome(float(accuracy), costs, kept, self.budget.kind)

    def reward_of(self, plan_or_counts: PruningPlan | Sequence[int], accuracy: float) -> float:
        """The episode reward of a plan (or channel counts) that scored ``accuracy``."""
        counts = plan_or_counts.counts(self.graph) if isinstance(plan_or_counts, PruningPlan) else plan_or_counts
        return float(self.reward_fn(self.outcome(counts, accuracy)))

    def _observation(self) -> np.ndarray:
        return self._observation_at(self._t or 0, self._counts, self._ratios[-1] if self._ratios else 1.0)

    def _observation_at(self, t: int, counts: Sequence[int], prev: float) -> np.ndarray:
        """The observation before step ``t`` after choosing ``counts`` (the first t units)."""
        t = min(t, self.n_units - 1)
        base = max(self.flops.base, 1e-12)
        partial = list(counts) + [u.out_channels for u in self.graph.units[len(counts):]]
        reduced = (base - self.flops(partial)) / base
        static = self._static[t]
        obs = np.concatenate([static[:9], [reduced, static[9], prev], static[10:] if self.group_features else []])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

