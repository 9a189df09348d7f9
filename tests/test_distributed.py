"""The Ray evaluation pool, on a real local Ray (num_cpus=2, started once for this module)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import tiny_config

from autoprune.errors import AutopruneError
from autoprune.pipeline.pool import RayEvaluatorPool, ensure_ray
from autoprune.search.evaluate import Evaluator

ray = pytest.importorskip("ray")


def _plans(session, n: int, seed: int = 0):
    ctx = session.context(None, None, None, False)
    rng = np.random.default_rng(seed)
    return [ctx.plan_from_ratios(ctx.fit_to_budget(rng.uniform(0.2, 1.0, len(session.graph)))) for _ in range(n)]


def _pool(session, **kw) -> RayEvaluatorPool:
    c = session.cfg
    return RayEvaluatorPool(session.model, session.graph, session.data, c.evaluation, c.pruning, c.train,
                            c.finetune, c.seed, **kw)


def _local(session) -> Evaluator:
    c = session.cfg
    return Evaluator(session.model, session.graph, session.data, evaluation=c.evaluation, pruning=c.pruning,
                     train=c.train, finetune=c.finetune, seed=c.seed)


def test_pool_equals_in_process(tiny_session, local_ray):
    plans = _plans(tiny_session, 4)
    local = _local(tiny_session)
    expected = [local.evaluate(p).accuracy for p in plans]
    expected_ft = local.evaluate(plans[0], finetune_steps=3).accuracy
    with _pool(tiny_session, workers=2) as pool:
        pids = ray.get([a.pid.remote() for a in pool.actors])
        assert len(set(pids)) == 2 and os.getpid() not in pids  # two real actor processes
        results = pool.evaluate_many(plans + plans[:1])  # the repeat is answered from the cache
        assert [r.accuracy for r in results] == expected + expected[:1]
        assert [r.cached for r in results] == [False] * 4 + [True]
        assert pool.evaluations == 4
        again = pool.evaluate(plans[1])
        assert again.cached and again.accuracy == expected[1] and pool.evaluations == 4
        assert pool.evaluate(plans[0], finetune_steps=3).accuracy == expected_ft
        assert pool.score(pool.prune(plans[2])) == expected[2]  # the driver-side evaluator agrees
    assert ray.is_initialized()  # the pool did not shut down a Ray it did not start
    assert ray.available_resources().get("CPU") == 2  # its killed actors' CPUs are free when close() returns
    assert pool.evaluate(plans[3]).accuracy == expected[3]  # closed: falls back to in-process


def test_evaluation_finetune_steps_is_every_evaluations_default_in_the_pool_too(tiny_session, local_ray):
    """``evaluation.finetune_steps: 3``: a plain ``evaluate`` is the 3-batch fine-tuned score, on the actors as
    in-process; an explicit count (re-ranking's, NetAdapt's) still wins; 0 means the proxy alone."""
    import dataclasses

    plan = _plans(tiny_session, 1, seed=3)[0]
    local = _local(tiny_session)
    tuned, proxy = local.evaluate(plan, finetune_steps=3).accuracy, local.evaluate(plan, finetune_steps=0).accuracy
    c = tiny_session.cfg
    evaluation = dataclasses.replace(c.evaluation, finetune_steps=3)
    ft = Evaluator(tiny_session.model, tiny_session.graph, tiny_session.data, evaluation=evaluation, pruning=c.pruning,
                   train=c.train, finetune=c.finetune, seed=c.seed)
    assert ft.evaluate(plan).accuracy == tuned and ft.evaluate(plan, finetune_steps=0).accuracy == proxy
    assert ft.evaluate(plan, finetune_steps=3).cached  # the default and the explicit 3 are one evaluation
    with RayEvaluatorPool(tiny_session.model, tiny_session.graph, tiny_session.data, evaluation, c.pruning, c.train,
                          c.finetune, c.seed, workers=1) as pool:
        assert pool.evaluate(plan).accuracy == tuned
        assert pool.evaluate(plan, finetune_steps=0).accuracy == proxy
        assert pool.evaluate(plan, finetune_steps=3).cached and pool.evaluations == 2


def test_killed_actor_is_replaced_and_its_work_retried(tiny_session, local_ray):
    plans = _plans(tiny_session, 4, seed=1)
    expected = [r.accuracy for r in _local(tiny_session).evaluate_many(plans)]
    with _pool(tiny_session, workers=2, max_retries=2) as pool:
        ray.kill(pool.actors[0])
        results = pool.evaluate_many(plans)
        assert [r.accuracy for r in results] == expected
        assert pool.replaced >= 1
        assert len(pool.actors) == 2 and all(ray.get([a.pid.remote() for a in pool.actors]))


def test_a_stalled_pool_says_what_the_cluster_has_free(tiny_session, local_ray, monkeypatch, caplog):
    """No result within ``STALL_WARN_S``: a warning with the free resources, then the pool keeps waiting."""
    import autoprune.pipeline.pool as pool_module

    plan = _plans(tiny_session, 1, seed=4)[0]
    expected = _local(tiny_session).evaluate(plan).accuracy
    monkeypatch.setattr(pool_module, "STALL_WARN_S", 0.05)  # the actor's start alone takes longer
    with caplog.at_level(logging.WARNING, logger="autoprune.pipeline.pool"), _pool(tiny_session, workers=1) as pool:
        assert pool.evaluate(plan).accuracy == expected
    assert re.search(r"no evaluation came back .*1 in flight on 1 actors.*CPU [\d.]+ of 2 free", caplog.text)


def test_retries_are_bounded(tiny_session, local_ray):
    with _pool(tiny_session, workers=1, max_retries=0) as pool:
        ray.kill(pool.actors[0])
        with pytest.raises(AutopruneError, match="max_retries=0"):
            pool.evaluate(_plans(tiny_session, 1, seed=2)[0])


def test_session_evaluator_follows_ray_workers(tiny_session, local_ray):
    assert type(tiny_session.evaluator()) is Evaluator  # workers 0: in-process
    tiny_session.cfg.ray.workers = 1
    try:
        pool = tiny_session.evaluator()
        assert isinstance(pool, RayEvaluatorPool) and pool.workers == 1
        pool.close()
    finally:
        tiny_session.cfg.ray.workers = 0


def test_running_ray_is_not_reinitialised(local_ray):
    assert ensure_ray("127.0.0.1:1") is False  # a running Ray is used as is, whatever the address


def test_unreachable_address_is_a_quick_clear_error(tmp_path):
    cfg = tiny_config(ray={"address": "127.0.0.1:1", "workers": 1})
    cfg["train"]["epochs"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "RAY_ADDRESS": ""}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", str(tmp_path / "c.yaml"), "--out",
                           str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("autoprune: error:") and "127.0.0.1:1" in err and "unreachable" in err
    assert "Traceback" not in proc.stderr
    assert time.time() - start < 60  # includes the tiny base model's training; the probe itself fails at once
    assert not (tmp_path / "run").exists()
