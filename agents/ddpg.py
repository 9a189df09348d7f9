"""``ddpg``: AMC's search (He et al. 2018) with stable-baselines3's DDPG on the pruning MDP.

Nothing of DDPG is written here: the agent is SB3's ``DDPG``, extended only through SB3's hooks.

- :class:`TruncatedNormalNoise` (an SB3 ``ActionNoise``; it and :class:`AMCDDPG` live in
  :mod:`autoprune.agents.ddpg_sb3`): AMC's exploration, a truncated normal
  around the actor's action inside the action bounds; sigma decays x``sigma_decay`` per episode
  after the warm-up, down to ``sigma_min``. Warm-up episodes use SB3's random actions (``learning_starts``).
- :class:`AMCEpisodes` (an SB3 ``BaseCallback`` in :mod:`autoprune.agents.ddpg_episodes`): at ``_on_rollout_end`` (after the episode's
  last transition is stored, before training) it scores the finished plans in one
  ``evaluate_many`` call, writes each episode's final reward minus a moving-average baseline
  onto every transition of that episode in the replay buffer, records one trials row per episode,
  and checkpoints at the next ``_on_rollout_start`` (after training).
- :class:`AMCDDPG`: ``DDPG`` whose ``_update_learning_rate`` hook also sets the actor's own
  learning rate (SB3 uses one rate for actor and critic; AMC uses 1e-4 / 1e-3), and whose
  ``_sample_action`` hook can take warm-up actions from a policy of ours instead of SB3's uniform
  samples (``warmup_sampling: budget``, see the presets module).

Presets (``preset:``, default ``autoprune``; ``amc`` is AMC's published search) and the optional
departures from AMC are described in :mod:`autoprune.agents.ddpg_presets`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from autoprune.agents.ddpg_episodes import AMCEpisodes
from autoprune.agents.ddpg_presets import PRESETS
from autoprune.agents.ddpg_sb3 import AMCDDPG, TruncatedNormalNoise
from autoprune.atomic import atomic_write_with
from autoprune.config import check_choice
from autoprune.core.plan import PruningPlan
from autoprune.envs.pruning_env import ACTION_MODES, ChannelPruningEnv
from autoprune.envs.rewards import make_reward
from autoprune.errors import AutopruneError, ConfigError
from autoprune.search.base import Searcher, best_of, plan_from_row, positive, register_searcher

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "autoprune.ddpg-checkpoint/v1"
SEARCH_OPTIONS = ("warmup", "warmup_sampling", "fill_budget", "repair_budget", "action_mode", "group_features",
                  "action_wall", "sigma", "sigma_decay", "sigma_min", "explore_best", "hidden", "updates_per_transition", "reward",
                  "reward_kwargs", "baseline_decay", "gamma", "tau", "actor_lr", "critic_lr", "batch_size")
"""Options that change how a search goes: a checkpoint stores them, and resuming with others is an error
(the config of a run names only the options set explicitly, so a changed default would otherwise slip
in mid-search). ``episodes``, ``checkpoint_every``, ``tensorboard`` and ``device`` may change on resume."""

ADDED_OPTIONS = {"explore_best": 0.0}
"""Search options added after checkpoints stored options, with the value a search had before them: a
checkpoint without the key resumes only with that value (the default changed with the option)."""

# TruncatedNormalNoise stays importable from here: checkpoints written before ddpg_sb3 existed name it here
__all__ = ["AMCDDPG", "AMCEpisodes", "DdpgSearcher", "TruncatedNormalNoise"]



@register_searcher
class DdpgSearcher(Searcher):
    """AMC: an SB3 DDPG agent picks each unit's preserve ratio; the best-reward episode wins."""

    name = "ddpg"

    @dataclass
    class Options:
        preset: str = "autoprune"
        """``autoprune`` (AMC, each episode scaled to the budget, a noise floor, half the learning episodes
        around the best plan), ``share`` (the default of 2026-12-05: share actions, random-search warm-up
        plans, a wider floor) or ``amc`` (AMC's published settings); see PRESETS.
        Options given explicitly override the preset's values."""
        episodes: int = 400
        """Episodes in total (one plan evaluation each), warm-up included."""
        warmup: int = 100
        """Episodes of random plans before the agent acts and learns."""
        warmup_sampling: str = "actions"
        """How warm-up episodes are drawn: ``actions`` (AMC: uniform per-step actions) or ``budget``
        (random-search plans that use the budget)."""
        fill_budget: bool = False
        """Raise a unit's count when the rest could not use the budget up (the env's lower wall; off:
        AMC's upper wall only). Leave it off with a reward that pays for cutting below the budget."""
        repair_budget: bool = True
        """At each episode's end scale the ratio vector up to use the budget; the repaired plan is
        scored and its transitions stored (off in ``preset: amc``)."""
        action_mode: str = "ratio"
        """``ratio`` (AMC: the action is the preserve ratio), ``share`` (relative to the unit's fair
        share of the budget left: 0 is that share, -1 ``min_ratio``, +1 ``max_ratio``; see the env) or
        ``centred`` (0 is the share, ratio mode's slope on both sides; experimental)."""
        group_features: bool = False
        """Add two features to AMC's observation: the unit's coupled-layer count and params share (see the env)."""
        action_wall: bool = False
        """AMC's per-step wall (``preset: amc``); off: each episode's ratio vector is scaled to the
        budget at its end instead (down or up, as ``random`` does; implies the repair)."""
        sigma: float = 0.5
        """Exploration noise of the truncated normal, relative to the action range scaled to [0, 1]."""
        sigma_decay: float = 0.95
        """Sigma is multiplied by this once per episode after the warm-up."""
        sigma_min: float = 0.05
        """Floor of the decayed sigma (``preset: amc``: 0, none). With a floor the late episodes keep
        searching around the actor's plan instead of replaying it."""
        explore_best: float = 0.5
        """Share of the learning episodes whose noise is centred on the best plan found so far instead
        of on the actor's action (spread evenly: 0.5 is every other episode; 0: AMC, always the actor,
        ``preset: amc``). Off-policy, so the agent learns from those episodes too."""
        hidden: list[int] = field(default_factory=lambda: [300, 300])
        """Hidden layer sizes of both actor and critic MLPs."""
        actor_lr: float = 1e-4
        critic_lr: float = 1e-3
        tau: float = 0.01
        """Soft target-update rate."""
        gamma: float = 1.0
        batch_size: int = 64
        updates_per_transition: int = 1
        """Gradient steps (critic and actor) per stored transition, taken after each rollout (AMC: 1)."""
        replay_episodes: int = 100
        """Replay buffer capacity, in episodes."""
        baseline_decay: float = 0.95
        """Moving-average baseline: b <- decay * b + (1 - decay) * episode reward."""
        reward: str = "acc"
        """Reward function name (autoprune.envs.rewards.REWARDS)."""
        reward_kwargs: dict[str, Any] = field(default_factory=dict)
        """Parameters of the reward function (e.g. {weight: 0.5} for blend)."""
        parallel_episodes: int = 1
        """Episodes played in lock-step per rollout; their plans are scored in one evaluate_many."""
        checkpoint_every: int = 10
        """Checkpoint agent, replay buffer, counters and RNG states every this many episodes."""
        tensorboard: bool = False
        """Write SB3's TensorBoard logs to <run_dir>/ddpg/tensorboard (needs the tensorboard package)."""
        device: str = "cpu"
        """Torch device of the agent's networks."""

        def validate(self) -> None:
            for name in ("episodes", "batch_size", "replay_episodes", "parallel_episodes", "checkpoint_every",
                         "actor_lr", "critic_lr", "tau", "updates_per_transition"):
                positive(name, getattr(self, name))
            for name in ("warmup", "sigma", "sigma_min"):
                positive(name, getattr(self, name), allow_zero=True)
            if not 0 <= self.explore_best <= 1:
                raise ConfigError(f"searcher.explore_best must be in [0, 1] (got {self.explore_best})")
            if self.sigma_min > self.sigma:
                raise ConfigError(f"searcher.sigma_min ({self.sigma_min}) must not exceed searcher.sigma ({self.sigma})")
            if not 0 < self.sigma_decay <= 1 or not 0 <= self.baseline_decay < 1 or not 0 <= self.gamma <= 1:
                raise ConfigError("searcher.sigma_decay must be in (0, 1], baseline_decay in [0, 1), gamma in [0, 1]")
            if not self.hidden or any(h < 1 for h in self.hidden):
                raise ConfigError(f"searcher.hidden must list positive layer sizes (got {self.hidden})")
            self._check_parallel()
            make_reward(self.reward, self.reward_kwargs)
            check_choice("searcher.warmup_sampling", self.warmup_sampling, ("actions", "budget"))
            check_choice("searcher.action_mode", self.action_mode, ACTION_MODES)
            check_choice("searcher.preset", self.preset, tuple(PRESETS))
            if self.fill_budget and not self.action_wall:
                raise ConfigError("searcher.fill_budget is a wall: it needs action_wall: true (without the wall "
                                  "every episode is scaled to the budget anyway)")
            if self.tensorboard:
                try:
                    import tensorboard  # noqa: F401
                except ImportError as exc:
                    raise ConfigError("searcher.tensorboard needs the tensorboard package; pip install "
                                      "tensorboard or set searcher.tensorboard=false") from exc

        def _check_parallel(self) -> None:
            """Episodes run ``parallel_episodes`` at a time: name the nearest valid values."""
            n, defaults = self.parallel_episodes, {f.name: f.default for f in dataclasses.fields(self)}
            fixes = []
            for name in ("episodes", "warmup"):
                value = getattr(self, name)
                if value % n:
                    low = value - value % n
                    near = f"{low} or {low + n}" if low > 0 or name == "warmup" else f"{low + n}"
                    now = f"{value}, the default" if value == defaults[name] else f"{value}"
                    fixes.append(f"searcher.{name} to {near} (now {now})")
            if self.replay_episodes < n:
                fixes.append(f"searcher.replay_episodes to {n} or more (now {self.replay_episodes})")
            if fixes:
                raise ConfigError(f"searcher.parallel_episodes is {n}, so searcher.episodes and searcher.warmup must "
                                  f"be multiples of {n} and searcher.replay_episodes at least {n}: set "
                                  + ", ".join(fixes))

    @classmethod
    def parse_options(cls, raw: dict[str, Any]) -> Any:
        """The preset's values (``preset``, default ``autoprune``), then the options given."""
        raw = dict(raw or {})
        preset = raw.get("preset", cls.Options.preset)
        if isinstance(preset, str) and preset in PRESETS:
            raw = {**PRESETS[preset], **raw}
        return super().parse_options(raw)

    # ----------------------------------------------------------------------------- search
    def search(self) -> PruningPlan:
        ctx, opts = self.ctx, self.options
        self.steps = len(ctx.graph)
        self.envs = [self._make_env() for _ in range(opts.parallel_episodes)]
        vec = DummyVecEnv([lambda e=e: e for e in self.envs])
        self.ckpt_path = Path(ctx.run_dir) / "ddpg" / "checkpoint.pkl" if ctx.run_dir else None
        state = self._load(vec) if ctx.resume and self.ckpt_path and self.ckpt_path.exists() else None
        if state is None:
            if ctx.resume and ctx.recorder.rows:
                log.warning("no DDPG checkpoint in %s: restarting the search from episode 0", ctx.run_dir)
                ctx.recorder.rows.clear()
            self.model = self._new_model(vec)
        done = state["episodes"] if state else 0
        self.warmup_rng = np.random.default_rng(ctx.seed + 2)
        if state and "warmup" in state["rng"]:
            self.warmup_rng.bit_generator.state = state["rng"]["warmup"]
        self.warmup_plans: list[np.ndarray | None] = [None] * len(self.envs)
        if opts.warmup_sampling == "budget":
            self.model.warmup_policy = self._warmup_actions
        self.model.action_noise.mean_fn = lambda: self.model.predict(self.model._last_obs, deterministic=True)[0]
        self.model.action_noise.center_fn = self._noise_centre
        self.incumbent: np.ndarray | None = None  # per-unit ratios of the best plan so far (explore_best)
        self.centred = [False] * len(self.envs)  # envs whose episode explores around the incumbent
        callback = AMCEpisodes(self, done, state["baseline"] if state else None)
        remaining = opts.episodes - done
        if remaining > 0:
            with callback.progress_bar(opts.episodes, done, ctx.progress):
                self.model.learn(remaining * self.steps, callback=callback, reset_num_timesteps=state is None,
                                 tb_log_name="ddpg")
        if callback.due:
            self.checkpoint(callback)
        return self._best()

    def _make_env(self) -> ChannelPruningEnv:
        ctx, p = self.ctx, self.ctx.pruning
        return ChannelPruningEnv(ctx.graph, ctx.evaluator, ctx.budget, reward=self.options.reward,
                                 reward_kwargs=self.options.reward_kwargs, min_ratio=p.min_ratio,
                                 max_ratio=p.max_ratio, round_to=p.round_to, costs=ctx.costs,
                                 defer_evaluation=True, fill_budget=self.options.fill_budget,
                                 repair_budget=self.options.repair_budget, action_wall=self.options.action_wall,
                                 action_mode=self.options.action_mode, group_features=self.options.group_features)

    def _warmup_actions(self) -> np.ndarray:
        """One action per env: each env plays a random-search plan (channel counts) drawn when its
        episode starts."""
        ctx, actions = self.ctx, []
        for i, env in enumerate(self.envs):
            t = env.unit_index
            if t == 0 or self.warmup_plans[i] is None:
                draw = self.warmup_rng.uniform(ctx.pruning.min_ratio, ctx.pruning.max_ratio, size=len(ctx.graph))
                self.warmup_plans[i] = np.array(ctx.counts(ctx.fit_to_budget(draw)))
            # aim at the middle of the count's rounding interval: float32 actions cannot tip it over
            actions.append(env.action_for(self.warmup_plans[i][t] / ctx.graph.units[t].out_channels))
        return np.stack(actions)

    def _noise_centre(self, actor: np.ndarray) -> np.ndarray:
        """Where each env's exploration noise is centred: the actor's action, or (``explore_best``) the
        action that gives the incumbent's ratio at the env's current unit."""
        if self.incumbent is None or not any(self.centred):
            return actor
        centre = np.array(actor, dtype=np.float64).reshape(len(self.envs), -1)
        for i, env in enumerate(self.envs):
            if self.centred[i]:
                centre[i] = env.action_for(float(self.incumbent[env.unit_index]))
        return centre

    def explores_best(self, episode: int) -> bool:
        """Whether learning episode ``episode`` centres its noise on the incumbent (evenly spread)."""
        p, j = self.options.explore_best, episode - self.options.warmup
        return p > 0 and j >= 0 and int((j + 1) * p + 1e-9) > int(j * p + 1e-9)

    def incumbent_ratios(self) -> np.ndarray | None:
        """Per-unit preserve ratios of the best-reward episode so far (None before the first)."""
        best = best_of(self.ctx.recorder.rows, key="reward")
        if best is None:
            return None
        graph = self.ctx.graph
        counts = plan_from_row(graph, best).counts(graph)
        return np.array([c / u.out_channels for c, u in zip(counts, graph.units, strict=True)])

    def _new_model(self, vec: DummyVecEnv) -> AMCDDPG:
        ctx, opts = self.ctx, self.options
        tb = str(Path(ctx.run_dir) / "ddpg" / "tensorboard") if opts.tensorboard and ctx.run_dir else None
        model = AMCDDPG(
            "MlpPolicy", vec, learning_rate=opts.critic_lr, buffer_size=opts.replay_episodes * self.steps,
            learning_starts=opts.warmup * self.steps, batch_size=opts.batch_size, tau=opts.tau, gamma=opts.gamma,
            train_freq=(self.steps, "step"), gradient_steps=self._gradient_steps(),
            action_noise=TruncatedNormalNoise(opts.parallel_episodes, seed=ctx.seed + 1),
            policy_kwargs={"net_arch": {"pi": list(opts.hidden), "qf": list(opts.hidden)}},
            tensorboard_log=tb, seed=ctx.seed, device=opts.device, verbose=0,
        )
        model.actor_learning_rate = opts.actor_lr
        return model

    def _gradient_steps(self) -> int:
        """Gradient steps per rollout: ``updates_per_transition`` per transition (-1: SB3's one each)."""
        k = self.options.updates_per_transition
        return -1 if k == 1 else k * self.steps * self.options.parallel_episodes

    def _best(self) -> PruningPlan:
        best = best_of(self.ctx.recorder.rows, key="reward")
        if best is None:
            raise AutopruneError("the DDPG search recorded no episode; raise searcher.episodes")
        plan = plan_from_row(self.ctx.graph, best)
        plan.meta.update(self.ctx.describe(plan), val_accuracy=float(best["val_accuracy"]), searcher=self.name,
                         reward=float(best["reward"]), episode=int(best["episode"]))
        return plan

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint(self, callback: AMCEpisodes) -> None:
        """Atomically write agent, replay buffer, counters and RNG states to one file.

        The agent and buffer are SB3's own ``save``/``save_replay_buffer`` archives (zip with
        cloudpickled data, and a pickle), wrapped in one pickle so a crash leaves either the old
        checkpoint or the new one.
        """
        if self.ckpt_path is None:
            return
        agent, replay = io.BytesIO(), io.BytesIO()
        self.model.save(agent)
        self.model.save_replay_buffer(replay)
        state = {"episodes": callback.episodes, "baseline": callback.baseline, "steps": self.steps,
                 "options": {k: getattr(self.options, k) for k in SEARCH_OPTIONS},
                 "rng": {"numpy": np.random.get_state(), "torch": torch.get_rng_state(), "python": random.getstate(),
                         "action_space": self.model.action_space.np_random.bit_generator.state,
                         "noise": self.model.action_noise.rng.bit_generator.state,
                         "warmup": self.warmup_rng.bit_generator.state}}
        blob = {"format": CHECKPOINT_FORMAT, "agent": agent.getvalue(), "replay": replay.getvalue(), "state": state}
        atomic_write_with(self.ckpt_path, lambda buf: pickle.dump(blob, buf, protocol=pickle.HIGHEST_PROTOCOL))
        callback.due = False
        log.debug("DDPG checkpoint at episode %d", callback.episodes)

    def _load(self, vec: DummyVecEnv) -> dict[str, Any]:
        """Restore agent, buffer and RNG states; drop trials rows recorded after the checkpoint."""
        try:  # our own file in the run dir: SB3's formats need pickle, weights_only is impossible here
            blob = pickle.loads(self.ckpt_path.read_bytes())
        except Exception as exc:
            raise AutopruneError(f"{str(self.ckpt_path)!r} is unreadable ({type(exc).__name__}); "
                                 "delete it to restart the search") from exc
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            raise AutopruneError(f"{str(self.ckpt_path)!r} is not a DDPG checkpoint; delete it to restart")
        state = blob["state"]
        if state["steps"] != self.steps:
            raise AutopruneError("the DDPG checkpoint was written for another model; start a new run")
        saved = state.get("options")
        if saved is not None:  # options added after the checkpoint was written: what the search had then
            saved = {**ADDED_OPTIONS, **saved}
        changed = {k: (saved[k], getattr(self.options, k)) for k in SEARCH_OPTIONS
                   if saved is not None and k in saved and saved[k] != getattr(self.options, k)}
        if changed:
            diff = ", ".join(f"searcher.{k}: {old} in the checkpoint, {new} now" for k, (old, new) in changed.items())
            raise AutopruneError(f"the DDPG checkpoint was written with other options ({diff}); resume with "
                                 "those (set them in the config) or start a new run")
        if saved is None:
            log.warning("the DDPG checkpoint predates stored options: resuming with today's options (the default "
                        "preset changed on 2026-12-05 and 2026-12-06; set searcher options explicitly to match the run's start)")
        try:
            self.model = AMCDDPG.load(io.BytesIO(blob["agent"]), env=vec, device=self.options.device)
        except ValueError as exc:  # SB3: the saved observation/action spaces differ from the env's
            raise AutopruneError(f"the DDPG checkpoint does not fit these options ({exc}); resume with the "
                                 "options it was written with (e.g. searcher.group_features) or start a new run") from exc
        self.model.load_replay_buffer(io.BytesIO(blob["replay"]))
        self.model.gradient_steps = self._gradient_steps()
        rng = state["rng"]
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.model.action_space.np_random.bit_generator.state = rng["action_space"]
        self.model.action_noise.rng.bit_generator.state = rng["noise"]
        self.model._last_obs = None  # fresh envs: learn() must reset them
        rows = self.ctx.recorder.rows
        kept = [r for r in rows if int(r.get("episode", -1)) < state["episodes"]]
        if len(kept) < state["episodes"]:
            raise AutopruneError(f"trials.parquet holds {len(kept)} episodes but the DDPG checkpoint is at "
                                 f"{state['episodes']}; delete {self.ckpt_path.parent} to restart the search")
        if len(kept) < len(rows):
            log.info("dropping %d trials rows recorded after the checkpoint", len(rows) - len(kept))
            rows[:] = kept
            self.ctx.recorder.flush()
        log.info("resuming DDPG at episode %d of %d", state["episodes"], self.options.episodes)
        return state
