"""The ``ddpg`` searcher's per-rollout bookkeeping, as an SB3 callback (:class:`AMCEpisodes`).

After each rollout (one episode per env) it scores the finished plans in one ``evaluate_many`` call,
writes each episode's reward minus a moving-average baseline onto every transition of that episode in
the replay buffer (AMC's reward: one per episode, the same for each of its steps), records one trials
row per episode, sets the exploration noise of the next rollout, and asks for a checkpoint. The
searcher that drives it is :mod:`autoprune.agents.ddpg`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from autoprune.core.plan import PruningPlan

if TYPE_CHECKING:
    from autoprune.agents.ddpg import DdpgSearcher


class AMCEpisodes(BaseCallback):
    """Per-rollout bookkeeping: scores, AMC reward rewrite, records, sigma schedule, checkpoints."""

    def __init__(self, searcher: DdpgSearcher, episodes: int, baseline: float | None) -> None:
        super().__init__(verbose=0)
        self.searcher, self.opts, self.ctx = searcher, searcher.options, searcher.ctx
        self.episodes = episodes
        self.baseline = baseline
        self.due = False
        self.finished: list[tuple[int, PruningPlan]] = []
        self.bar: Any = None

    def progress_bar(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc="ddpg search", unit="episode", disable=not enabled or None)
        return self.bar

    def sigma(self, episode: int) -> float:
        """Noise sigma of ``episode`` in the options' units (action range scaled to [0, 1])."""
        decayed = self.opts.sigma * self.opts.sigma_decay ** max(0, episode - self.opts.warmup)
        return max(decayed, self.opts.sigma_min)

    def _on_rollout_start(self) -> None:
        if self.due:  # after the previous rollout's gradient steps: the agent is up to date
            self.searcher.checkpoint(self)
        noise = self.model.action_noise
        noise.active = self.episodes >= self.opts.warmup
        noise.sigma = 2.0 * self.sigma(self.episodes)  # the action range [-1, 1] is 2 wide
        s = self.searcher
        s.centred = [s.explores_best(self.episodes + i) for i in range(len(s.envs))]
        s.incumbent = s.incumbent_ratios() if any(s.centred) else None
        self.finished = []

    def _on_step(self) -> bool:
        # Runs *before* SB3 stores this step's transition: only collect the finished plans here.
        for i, done in enumerate(self.locals["dones"]):
            if done:
                self.finished.append((i, self.locals["infos"][i]["plan"]))
        return True

    def _on_rollout_end(self) -> None:
        if not self.finished:
            return
        results = self.ctx.evaluate_many([plan for _, plan in self.finished])
        env = self.searcher.envs[0]
        rewards = np.array([env.reward_of(plan, res.accuracy) for (_, plan), res in zip(self.finished, results, strict=True)])
        base = float(rewards.mean()) if self.baseline is None else self.baseline
        for (i, plan), reward in zip(self.finished, rewards, strict=True):
            self._rewrite(i, float(reward) - base, plan)
        b = base
        for reward in rewards:
            b = self.opts.baseline_decay * b + (1 - self.opts.baseline_decay) * float(reward)
        self.baseline = b
        sigma, warm = self.sigma(self.episodes), self.episodes < self.opts.warmup
        extra = {}
        for k, ((i, plan), res, reward) in enumerate(zip(self.finished, results, rewards, strict=True)):
            if self.opts.explore_best > 0:  # which episodes explored around the incumbent
                extra = {"explore_best": bool(self.searcher.centred[i] and self.searcher.incumbent is not None)}
            self.ctx.record(plan, res, reward=float(reward), flush=k == len(results) - 1,
                            episode=self.episodes, sigma=sigma, warmup=warm, **extra)
            self.logger.record("search/reward", float(reward))
            self.logger.record("search/accuracy", float(res.accuracy))
            self.episodes += 1
        if self.opts.tensorboard:
            self.logger.dump(step=self.episodes)
        n, k = len(results), self.opts.checkpoint_every
        self.due = self.episodes // k > (self.episodes - n) // k or self.episodes >= self.opts.episodes
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(best=f"{max(r['reward'] for r in self.ctx.recorder.rows):.4f}",
                                 reward=f"{rewards[-1]:.4f}")
        self.finished = []

    def _rewrite(self, env_index: int, value: float, plan: PruningPlan) -> None:
        """Write ``value`` onto the episode's T transitions: the last T rows of column env_index.
        With the repair (or scaling) the observations and actions become those of the plan scored."""
        buf, steps = self.model.replay_buffer, self.searcher.steps
        rows = (buf.pos - steps + np.arange(steps)) % buf.buffer_size
        dones = buf.dones[rows, env_index]
        if dones[-1] != 1 or dones[:-1].any():
            raise RuntimeError("replay buffer rows do not hold exactly one episode (a bug)")
        buf.rewards[rows, env_index] = value
        if self.searcher.envs[env_index].repair_budget:
            obs, actions = self.searcher.envs[env_index].trajectory(plan.counts(self.ctx.graph))
            buf.actions[rows, env_index] = actions
            buf.observations[rows, env_index] = obs[:-1]
            if not buf.optimize_memory_usage:
                buf.next_observations[rows, env_index] = obs[1:]
