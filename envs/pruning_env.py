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
random search at 50% and 25%), worse at 15% FLOPs of a ResNet-56, so not the default.

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

from autoprune.core.cost import Budget, CostModel, FlopsCost, ParamsCost
from autoprune.core.graph import LayerSpec, UnitGraph
from autoprune.core.plan import PruningPlan, resolve_count
from autoprune.envs.rewards import Outcome, RewardFn, make_reward
from autoprune.errors import ConfigError

ACTION_MODES = ("ratio", "share")
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
    :param action_mode: ``ratio`` (AMC: the action maps linearly to a preserve ratio) or ``share``
        (relative to the unit's fair share of the budget left, above).
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
        if round_to < 1:
            raise ConfigError(f"round_to must be >= 1 (got {round_to})")
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
        self.min_counts = [resolve_count(min_ratio, u.out_channels, u.step(round_to)) for u in graph.units]
        self.max_counts = [resolve_count(max_ratio, u.out_channels, u.step(round_to)) for u in graph.units]
        self.candidates = [self._candidate_counts(u) for u in graph.units]
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
    def _candidate_counts(self, unit: LayerSpec) -> np.ndarray:
        """Every count a ratio in [min_ratio, max_ratio] can resolve to, ascending."""
        channels, step = unit.out_channels, unit.step(self.round_to)
        lo = resolve_count(self.min_ratio, channels, step)
        hi = resolve_count(self.max_ratio, channels, step)
        found = {resolve_count(k / channels, channels, step) for k in range(lo, hi + 1)}
        return np.array(sorted(c for c in found | {lo, hi} if lo <= c <= hi), dtype=np.int64)

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
        end = self.max_ratio if x >= 0 else self.min_ratio
        return float(share + abs(x) * (end - share))

    def ratio_to_action(self, ratio: float, share: float | None = None) -> np.ndarray:
        """The action that :meth:`action_to_ratio` maps to ``ratio`` (the inverse map)."""
        ratio = float(np.clip(ratio, self.min_ratio, self.max_ratio))
        if share is None:
            span = self.max_ratio - self.min_ratio
            x = 0.0 if span <= 0 else 2.0 * (ratio - self.min_ratio) / span - 1.0
        else:
            end = self.max_ratio if ratio >= share else self.min_ratio
            x = 0.0 if end == share else (ratio - share) / (end - share) * (1.0 if ratio >= share else -1.0)
        return np.array([np.clip(x, -1.0, 1.0)], dtype=np.float32)

    def action_for(self, ratio: float) -> np.ndarray:
        """The action that gives ``ratio`` at the current step (in either action mode)."""
        t = self.unit_index
        return self.ratio_to_action(ratio, self.fair_share(t, self._counts))

    def fair_share(self, t: int, counts: Sequence[int], iters: int = 30) -> float | None:
        """``action_mode="share"``: the largest ratio that units ``t`` onwards can all keep with the
        budget met, the first ``t`` units at ``counts`` (clipped to the ratio range); None in ``ratio``
        mode. The budget's own cost model prices the vectors, so any budget kind works."""
        if self.action_mode != "share":
            return None
        head = list(counts[:t])

        def fits(r: float) -> bool:
            return self.budget.fits(head + [resolve_count(r, u.out_channels, u.step(self.round_to))
                                            for u in self.graph.units[t:]])

        lo, hi = self.min_ratio, self.max_ratio
        if fits(hi):
            return hi
        if not fits(lo):
            return lo
        for _ in range(iters):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    @property
    def unit_index(self) -> int:
        """The unit the next step decides (0 right after ``reset``)."""
        return self._t or 0

    def wall(self, t: int, desired: int) -> tuple[int, bool]:
        """The walls on unit ``t``'s count. Returns (count, clipped).

        Lower (``fill_budget`` only): ``desired`` is raised to the smallest candidate with which
        the budget can still be used up, later units at their maximum. Upper (AMC): the count is
        then lowered to the largest candidate that keeps the budget reachable, later units at
        their minimum; the upper wall wins (the budget is a hard limit).
        """
        cand = self.candidates[t]

        def fits(count: int, later: list[int]) -> bool:
            return self.budget.fits(self._counts + [int(count)] + later[t + 1:])

        target = int(desired)
        if self.fill_budget and fits(target, self.max_counts):  # would leave budget nothing later can use
            if fits(int(cand[-1]), self.max_counts):
                target = int(cand[-1])
            else:
                i = int(np.searchsorted(cand, target))
                target = int(cand[_last(i, len(cand) - 1, lambda k: fits(int(cand[k]), self.max_counts)) + 1])
        if fits(target, self.min_counts):
            return target, target != desired
        # cand[0] fits (it is the vector that passed at the previous step); cand[i] does not
        i = int(np.searchsorted(cand, target))
        count = int(cand[_last(0, i, lambda k: fits(int(cand[k]), self.min_counts))])
        return count, count != desired

    def repair(self, counts: Sequence[int], iters: int = 40) -> list[int]:
        """Scale the ratio vector of ``counts`` up by the largest factor whose clipped, rounded plan
        meets the budget (bisection on the factor; cost grows with it), then raise single counts,
        last unit first, while the budget allows. Never shrinks a count; the result meets the budget
        (given ``counts`` that do) and no unit of it can grow by one candidate count."""
        ratios = self._ratios_of(counts)
        lo, hi = 1.0, self.max_ratio / max(float(ratios.min()), 1e-6)
        if hi > lo and self.budget.fits(self._scaled(ratios, hi, counts)):
            lo = hi
        elif hi > lo:
            lo = self._largest_factor(ratios, lo, hi, iters, counts)
        best = self._scaled(ratios, lo, counts)
        if not self.budget.fits(best):
            best = list(counts)
        # rounding leaves a remainder no uniform factor can use: last unit first, raise each count to
        # the largest candidate that fits (earlier units only grow after it, so none can grow after)
        for t in reversed(range(self.n_units)):
            cand = self.candidates[t]
            i = int(np.searchsorted(cand, best[t]))

            def fits(j: int, t: int = t, cand: np.ndarray = cand) -> bool:
                return self.budget.fits(best[:t] + [int(cand[j])] + best[t + 1:])

            if i < len(cand) - 1 and fits(i):
                best[t] = max(best[t], int(cand[_last(i, len(cand), fits)]))
        return best

    def fit(self, counts: Sequence[int], iters: int = 40) -> list[int]:
        """Scale the ratio vector of ``counts`` by the largest factor (below or above 1) whose clipped,
        rounded plan meets the budget, then fill the remainder as :meth:`repair` does. The result
        meets the budget for any ``counts`` (a factor of 0 gives every unit its minimum, which the
        constructor checked is reachable)."""
        if self.budget.fits(list(counts)):
            return self.repair(counts, iters)
        ratios = self._ratios_of(counts)
        return self.repair(self._scaled(ratios, self._largest_factor(ratios, 0.0, 1.0, iters)), iters)

    def _ratios_of(self, counts: Sequence[int]) -> np.ndarray:
        return np.array([c / u.out_channels for c, u in zip(counts, self.graph.units, strict=True)], dtype=np.float64)

    def _scaled(self, ratios: np.ndarray, factor: float, floor: Sequence[int] | None = None) -> list[int]:
        """The counts of ``ratios * factor``, clipped to the ratio range and rounded (never below
        ``floor`` when given)."""
        r = np.clip(ratios * factor, self.min_ratio, self.max_ratio)
        counts = [resolve_count(float(x), u.out_channels, u.step(self.round_to))
                  for x, u in zip(r, self.graph.units, strict=True)]
        return counts if floor is None else [max(int(f), c) for f, c in zip(floor, counts, strict=True)]

    def _largest_factor(self, ratios: np.ndarray, lo: float, hi: float, iters: int,
                        floor: Sequence[int] | None = None) -> float:
        """Bisection for the largest factor in [lo, hi] whose scaled plan meets the budget (``lo`` fits)."""
        for _ in range(iters):
            mid = (lo + hi) / 2
            if self.budget.fits(self._scaled(ratios, mid, floor)):
                lo = mid
            else:
                hi = mid
        return lo

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


def _last(lo: int, hi: int, pred) -> int:
    """Bisection: the last index in [lo, hi) where ``pred`` holds, given that it holds at ``lo``,
    fails at ``hi`` and is monotone (true, then false)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            lo = mid
        else:
            hi = mid
    return lo
