"""The ``ddpg`` searcher's presets: named sets of option values.

Presets (``preset:``; options set explicitly override the preset's values):

- ``autoprune`` (the default): AMC's settings with ``action_wall: false``: no per-step clipping;
  at each episode's end the env scales the ratio vector, down or up, to the budget (as the
  ``random`` searcher scales its draws), so the plan scored, and the transitions stored, are the
  scaled ones. With AMC's wall, per-step uniform warm-up actions spend an aggressive budget on the
  first units and the wall crushes the rest (ResNet-56 at 15% FLOPs: warm-up plans 0.30 vs random
  search's 0.48 on average, and the agent never caught up). Also a noise floor (``sigma_min: 0.05``)
  and ``explore_best: 0.5``: every other learning episode explores around the best plan so far
  instead of the actor's action. Ratio actions and AMC's per-step uniform warm-up actions, as in AMC.
  At or above random search at equal evaluations in every measured cell (docs/amc.md, 2026-12-06).
- ``share``: the default from 2026-12-05 to 2026-12-06: ``action_mode: share`` (each action read
  against the unit's fair share of the budget left), ``warmup_sampling: budget`` (the warm-up plays
  random-search plans) and a wider floor (``sigma_min: 0.15``, ``sigma_decay: 0.98``), with
  ``explore_best: 0.5``. Even with random search at 15% and 30% FLOPs of a ResNet-56, below it at
  10% (0.570 vs 0.583) and below ``autoprune`` at 10% and 15% (0.570 / 0.704 vs 0.627 / 0.762 at 100
  episodes; docs/amc.md).
- ``amc``: AMC's published behaviour (He et al. 2018, mit-han-lab/amc defaults): warm-up 100
  episodes of uniform per-step actions, sigma 0.5 decaying x0.95 per episode, upper action wall
  only, no fill, no repair.

Optional departures from AMC, off in preset ``amc``:

- ``fill_budget: true`` (off in every preset; needs the wall): the env's lower wall raises a count
  that would leave budget no later unit can use, so every episode ends at the budget.
- ``warmup_sampling: budget`` (on in ``share``): a warm-up episode plays a random-search plan
  (one uniform ratio per unit, the vector scaled to use the budget, as the ``random`` searcher draws
  them) instead of AMC's per-step uniform actions (``actions``), which spend the budget on the first
  units and leave the action wall to crush the last ones (without the wall the episode's scaling
  keeps them).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # AMC's published search (the mit-han-lab/amc defaults): the settings this searcher had before presets.
    "amc": {"warmup": 100, "warmup_sampling": "actions", "fill_budget": False, "repair_budget": False,
            "action_wall": True, "sigma": 0.5, "sigma_decay": 0.95, "sigma_min": 0.0, "action_mode": "ratio",
            "updates_per_transition": 1, "group_features": False, "explore_best": 0.0},
    # AMC with the wall replaced by scaling each episode's ratios to the budget, a noise floor and half the
    # learning episodes around the best plan (the option defaults; see the module docstring).
    "autoprune": {"warmup": 100, "warmup_sampling": "actions", "fill_budget": False, "repair_budget": True,
                  "action_wall": False, "sigma": 0.5, "sigma_decay": 0.95, "sigma_min": 0.05, "action_mode": "ratio",
                  "updates_per_transition": 1, "group_features": False, "explore_best": 0.5},
    # the default from 2026-12-05 to 2026-12-06: share actions, random-search warm-up plans, a wider floor
    "share": {"warmup": 100, "warmup_sampling": "budget", "fill_budget": False, "repair_budget": True,
              "action_wall": False, "sigma": 0.5, "sigma_decay": 0.98, "sigma_min": 0.15, "action_mode": "share",
              "updates_per_transition": 1, "group_features": False, "explore_best": 0.5},
}
"""Searcher options each ``preset`` sets; options given explicitly override them."""
