"""Streaming: only training and fine-tuning epochs read a whole split; scoring and adaptive BN read
their fixed subsets through DataLoaders, on any Dataset, with the same results as before."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import tiny_config
from torch.utils.data import Dataset

from autoprune.config import DataConfig, EvaluationConfig, load_config
from autoprune.core.plan import PruningPlan
from autoprune.core.train import accuracy, dataset_accuracy, make_loader
from autoprune.data.datasets import DataBundle, load_data
from autoprune.search.evaluate import Evaluator, fixed_batches

CREATED: dict[str, CountingDataset] = {}


def in_training() -> bool:
    """Whether the caller runs inside ``train_model`` (a training or fine-tuning run)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "train_model" and frame.f_globals.get("__name__") == "autoprune.core.train":
            return True
        frame = frame.f_back
    return False


class CountingDataset(Dataset):
    """Counts item reads; fails as soon as reads outside training have covered the whole split."""

    def __init__(self, base: Dataset, name: str, guard: bool = True) -> None:
        self.base, self.name, self.guard = base, name, guard
        self.outside: set[int] = set()
        self.outside_reads = self.training_reads = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if in_training():
            self.training_reads += 1
        else:
            self.outside.add(int(i))
            self.outside_reads += 1
            if self.guard and len(self.outside) == len(self):
                raise AssertionError(f"the whole {self.name} split was read outside a training epoch")
        return self.base[i]

    @property
    def targets(self) -> torch.Tensor:
        return self.base.tensors[1]


def counting_factory(val_samples: int = 200):
    """A data factory: the digits splits, wrapped so that every read is counted (test not wrapped)."""
    data = load_data(DataConfig(name="digits", val_samples=val_samples))
    CREATED["train"] = CountingDataset(data.train, "train")
    CREATED["val"] = CountingDataset(data.val, "val")
    return CREATED["train"], CREATED["val"], data.test


def wrapped(data: DataBundle) -> DataBundle:
    # val unguarded: without evaluation.score_samples the whole (small) val split is the scoring subset
    return DataBundle(CountingDataset(data.train, "train"), CountingDataset(data.val, "val", guard=False), data.test,
                      data.input_shape, data.num_classes, data.name)


def test_a_search_end_to_end_reads_whole_splits_only_in_training(tmp_path):
    from autoprune.pipeline.run import run_search

    assert sys.modules[__name__].CREATED is CREATED  # the factory below fills this module's CREATED
    raw = tiny_config(data={"factory": f"{__name__}:counting_factory"},
                      evaluation={"adaptive_bn_batches": 3, "batch_size": 64, "score_samples": 120},
                      pruning={"criterion": "taylor", "calibration_batches": 2})
    run_dir = run_search(load_config(raw), out=tmp_path / "run", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    train, val = CREATED["train"], CREATED["val"]
    assert train.training_reads >= 2 * len(train)  # base training and the fine-tune: whole epochs
    fixed = {i for b in fixed_batches(train.base, 3, 64, seed=0).index_lists for i in b}
    assert train.outside <= fixed | {0}  # adaptive BN + calibration: one fixed set (+ the factory check of [0])
    assert val.outside == set(range(120))  # scoring: the first score_samples of the split, nothing else
    assert val.training_reads == 0
    assert summary["evaluations"] == 3


def test_evaluator_scores_any_dataset_exactly_as_tensors(tiny_session):
    s = tiny_session
    c = s.cfg
    plain = s.evaluator()
    other = Evaluator(s.model, s.graph, wrapped(s.data), c.evaluation, c.pruning, c.train, c.finetune, c.seed)
    for ratio in (0.3, 0.6):
        plan = PruningPlan.from_ratios(s.graph, ratio)
        assert other.evaluate(plan).accuracy == plain.evaluate(plan).accuracy
    assert other.base_accuracy() == plain.base_accuracy()


def test_fixed_batches_beyond_the_cache_cap_are_read_again_with_the_same_result(tiny_session):
    s = tiny_session
    c = s.cfg
    data = wrapped(s.data)
    uncached = Evaluator(s.model, s.graph, data, EvaluationConfig(adaptive_bn_batches=3, cache_mb=0), c.pruning,
                         c.train, c.finetune, c.seed)
    cached = s.evaluator()
    assert cached.bn_batches.cache is not None and uncached.bn_batches.cache is None
    before = data.train.outside_reads
    plan = PruningPlan.from_ratios(s.graph, 0.5)
    assert uncached.evaluate(plan).accuracy == Evaluator(
        s.model, s.graph, s.data, EvaluationConfig(adaptive_bn_batches=3), c.pruning, c.train, c.finetune,
        c.seed).evaluate(plan).accuracy
    assert data.train.outside_reads - before == 3 * 64  # re-read for this plan, three batches of 64
    assert len(data.train.outside) == 3 * 64  # ... the same images as before


def test_fixed_batches_are_the_same_indices_with_workers(tiny_session):
    ds = tiny_session.data.train
    a = fixed_batches(ds, 3, 32, seed=5)
    from autoprune.core.train import LoaderSettings

    b = fixed_batches(ds, 3, 32, seed=5, loader=LoaderSettings(num_workers=2))
    assert len(a) == len(b) == 3 and len(a[:2]) == 2
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, _ = ds.tensors
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[1][0], x[idx[32:64]])


def test_accuracy_counts_over_any_iterable_of_batches(tiny_session):
    model, test = tiny_session.model, tiny_session.data.test
    whole = dataset_accuracy(model, test)
    x, y = test.tensors
    assert accuracy(model, [(x[:100], y[:100]), (x[100:], y[100:])]) == pytest.approx(whole)
    assert accuracy(model, make_loader(test, 7)) == pytest.approx(whole)
