"""The bad-input catalogue: every case is one line on stderr, exit code 2, no traceback, and the
run dir (or any other output) untouched: absent stays absent, an existing dir keeps the same files
with the same bytes.

Each case is a function ``(env) -> Case`` registered with ``@case``; ``test_bad_input`` drives the
CLI in-process (``autoprune.cli.main`` + capsys), ``test_bad_input_in_a_subprocess`` runs a few of
them as ``python -m autoprune.cli`` to prove that no traceback reaches the user.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TESTS, tiny_config

from autoprune.cli import main
from autoprune.errors import AutopruneError

SHAPE = (1, 8, 8)


@dataclass
class Case:
    argv: list[str]
    message: str
    """Regex the error line must match (it names the problem)."""
    watch: list[Path] = field(default_factory=list)
    """Paths that must be exactly as they were (absent, or same files and bytes)."""
    max_seconds: float | None = None


@dataclass
class Env:
    tmp: Path
    request: pytest.FixtureRequest

    def finished(self, kind: str = "random") -> Path:
        """A private copy of a finished tiny run dir (``random`` or ``ddpg``)."""
        src = self.request.getfixturevalue("finished_runs")[kind]
        dst = self.tmp / f"done_{kind}"
        shutil.copytree(src, dst)
        return dst


CASES: dict[str, Callable[[Env], Case]] = {}


def case(fn: Callable[[Env], Case]) -> Callable[[Env], Case]:
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


def base(**sections) -> dict:
    """A tiny config that reaches the search in well under a second (untrained model)."""
    raw = tiny_config(train={"epochs": 0, "lr": 0.05, "batch_size": 64}, finetune={"epochs": 0})
    raw.update(sections)
    return raw


def write_yaml(env: Env, raw: dict, name: str = "exp.yaml") -> str:
    path = env.tmp / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def search(env: Env, message: str, extra: list[str] | None = None, **sections) -> Case:
    out = env.tmp / "run"
    argv = ["search", write_yaml(env, base(**sections)), "--out", str(out), "--no-progress", *(extra or [])]
    return Case(argv, message, [out])


# ------------------------------------------------------------------------------ config file


@case
def case_missing_config_file(env):
    return Case(["search", str(env.tmp / "nope.yaml"), "--out", str(env.tmp / "run")], "does not exist",
                [env.tmp / "run"])


@case
def case_config_not_valid_yaml(env):
    path = env.tmp / "broken.yaml"
    path.write_text("model: {name: mnist_cnn\nbudget: [flops\n")
    return Case(["search", str(path), "--out", str(env.tmp / "run")], "not valid YAML at line", [env.tmp / "run"])


@case
def case_config_not_a_mapping(env):
    path = env.tmp / "list.yaml"
    path.write_text("- model\n- data\n")
    return Case(["search", str(path), "--out", str(env.tmp / "run")], "must hold a mapping", [env.tmp / "run"])


@case
def case_run_name_with_a_slash(env):
    return search(env, r"name 'a/b' must be a non-empty file-name part", name="a/b")


@case
def case_misspelled_key(env):
    return search(env, r"unknown config key pruning\.critrion: did you mean pruning\.criterion\? Rename it",
                  pruning={"critrion": "l1"})


@case
def case_unknown_section(env):
    return search(env, "unknown config key searchr: did you mean searcher?", searchr={"name": "random"})


@case
def case_unknown_key_without_a_near_one(env):
    return search(env, r"unknown config key train\.zzz: remove it \(valid keys of train: epochs, lr",
                  train={"epochs": 0, "zzz": 1})


@case
def case_misspelled_epochs(env):
    return search(env, r"unknown config key train\.epocs: did you mean train\.epochs\?", train={"epocs": 0})


@case
def case_misspelled_lr_scale(env):
    return search(env, r"unknown config key finetune\.lr_scal: did you mean finetune\.lr_scale\?",
                  finetune={"epochs": 0, "lr_scal": 0.1})


@case
def case_renamed_evaluation_val_samples(env):
    return search(env, r"^autoprune: error: evaluation\.val_samples was renamed to evaluation\.score_samples; "
                       "rename it in the config$", evaluation={"val_samples": 100})


@case
def case_renamed_finetune_rewind(env):
    return search(env, r"finetune\.rewind was renamed to finetune\.rewind_epoch; .* init as 0 and epoch_N as N",
                  finetune={"epochs": 0, "rewind": "init"})


@case
def case_unknown_granularity(env):
    return search(env, r"pruning\.granularity 'channels' is not a valid value; did you mean channel\? "
                       r"Set it to one of: channel, fine, nm", pruning={"granularity": "channels"})


@case
def case_unknown_schedule_kind(env):
    return search(env, r"finetune\.schedule\.kind 'cubik' is not a valid value; did you mean cubic\?",
                  finetune={"epochs": 0, "schedule": {"steps": 2, "kind": "cubik"}})


@case
def case_schedule_without_steps(env):
    return search(env, r"finetune\.schedule\.steps is required", finetune={"epochs": 0, "schedule": {"kind": "linear"}})


@case
def case_schedule_zero_steps(env):
    return search(env, r"finetune\.schedule\.steps must be >= 1 \(got 0\)", finetune={"schedule": {"steps": 0}})


@case
def case_rewind_epoch_past_training(env):
    return search(env, r"finetune\.rewind_epoch 3 is past the base training's 0 epochs .* set it to at most 0",
                  finetune={"epochs": 0, "rewind_epoch": 3})


@case
def case_rewind_epoch_with_a_checkpoint(env):
    return search(env, "finetune.rewind_epoch needs the early weights .* drop finetune.rewind_epoch or model.checkpoint",
                  model={"name": "mnist_cnn", "kwargs": {"width": 8}, "checkpoint": str(env.tmp / "base.pt")},
                  train={"epochs": 1}, finetune={"epochs": 0, "rewind_epoch": 0})


@case
def case_wrong_value_type(env):
    return search(env, "train.epochs must be an integer", train={"epochs": "three"})


@case
def case_section_not_a_mapping(env):
    return search(env, "pruning must be a mapping", pruning="l1")


@case
def case_budget_zero(env):
    return search(env, r"budget\.flops .* must be in \(0, 1\]", budget={"flops": 0})


@case
def case_budget_negative(env):
    return search(env, r"budget\.params .* must be in \(0, 1\]", budget={"params": -0.5})


@case
def case_budget_above_one(env):
    return search(env, r"must be in \(0, 1\] \(got 1.5\)", budget={"flops": 1.5})


@case
def case_budget_two_kinds(env):
    return search(env, "set exactly one of flops, params", budget={"flops": 0.5, "params": 0.5})


@case
def case_budget_below_reachable(env):
    return search(env, "below the minimum reachable .* lower pruning.min_ratio", budget={"flops": 0.1},
                  pruning={"min_ratio": 0.5})


@case
def case_budget_below_the_fixed_part(env):
    return search(env, "below what this model can reach: .* raise the budget", budget={"flops": 0.01})


@case
def case_skip_pattern_matches_nothing(env):
    return search(env, "pruning.skip: 'layer9' matches no layer of the model", pruning={"skip": ["layer9"]})


@case
def case_negative_seed(env):
    return search(env, r"seed must be an integer in \[0, 2\*\*63\) \(got -1\)", seed=-1)


@case
def case_zero_batch_size(env):
    return search(env, "train.batch_size must be >= 1", train={"epochs": 1, "batch_size": 0})


@case
def case_test_fraction_out_of_range(env):
    return search(env, r"data.test_fraction must be in \(0, 1\)", data={"name": "digits", "test_fraction": 2})


@case
def case_learning_rate_nan(env):
    return search(env, "train.lr and finetune.lr_scale must be > 0", train={"epochs": 1, "lr": math.nan})


# ------------------------------------------------------------------------------- registries


@case
def case_unknown_searcher(env):
    return search(env, r"unknown searcher 'ddgp' \(did you mean 'ddpg'\?\)", searcher={"name": "ddgp"})


@case
def case_unknown_searcher_option(env):
    return search(env, r"unknown config key searcher\.episode: did you mean searcher\.episodes\?",
                  searcher={"name": "ddpg", "episode": 3})


@case
def case_misspelled_searcher_option(env):
    return search(env, r"unknown config key searcher\.warmpu: did you mean searcher\.warmup\?",
                  searcher={"name": "ddpg", "warmpu": 3})


@case
def case_option_of_another_searcher(env):
    return search(env, r"searcher\.warmup is an option of ddpg, not random: remove it, or set searcher\.name: ddpg",
                  searcher={"name": "random", "evaluations": 2, "warmup": 3})


@case
def case_renamed_sensitivity_fill_budget(env):
    return search(env, r"searcher\.fill_budget was renamed to searcher\.scale_to_budget",
                  searcher={"name": "sensitivity", "fill_budget": False})


@case
def case_ddpg_parallel_episodes_with_default_episodes(env):
    return search(env, r"searcher\.parallel_episodes is 3, so .* multiples of 3 .*: set searcher\.episodes to 399 or "
                       r"402 \(now 400, the default\), searcher\.warmup to 99 or 102 \(now 100, the default\)$",
                  searcher={"name": "ddpg", "parallel_episodes": 3})


@case
def case_ddpg_replay_smaller_than_parallel_episodes(env):
    return search(env, r"set searcher\.replay_episodes to 4 or more \(now 2\)$",
                  searcher={"name": "ddpg", "episodes": 8, "warmup": 4, "parallel_episodes": 4, "replay_episodes": 2})


@case
def case_unknown_warmup_sampling(env):
    return search(env, r"searcher\.warmup_sampling 'budgets' is not a valid value; did you mean budget\?",
                  searcher={"name": "ddpg", "warmup_sampling": "budgets"})


@case
def case_unknown_model(env):
    return search(env, "unknown model 'resnet21'", model={"name": "resnet21"})


@case
def case_unknown_dataset(env):
    return search(env, "unknown dataset 'mnist6k'", data={"name": "mnist6k"})


@case
def case_unknown_criterion(env):
    return search(env, "unknown criterion 'l3'", pruning={"criterion": "l3"})


@case
def case_unknown_reward(env):
    return search(env, "unknown reward 'acc_flop'", searcher={"name": "ddpg", "reward": "acc_flop"})


# -------------------------------------------------------------------------- user factories


@case
def case_factory_does_not_import(env):
    return search(env, "cannot import module 'no_such_pkg.models'", model={"factory": "no_such_pkg.models:net"})


@case
def case_factory_attribute_missing(env):
    return search(env, "has no attribute 'no_such_fn'", model={"factory": "factories:no_such_fn"})


@case
def case_factory_returns_wrong_type(env):
    return search(env, "returned str, expected a torch.nn.Module", model={"factory": "factories:not_a_model"})


@case
def case_factory_raises(env):
    return search(env, "model factory 'factories:raising_factory' failed: RuntimeError: boom",
                  model={"factory": "factories:raising_factory"})


@case
def case_data_factory_returns_wrong_type(env):
    return search(env, r"must return \(train, val, test\)", data={"factory": "factories:tiny_cnn"})


@case
def case_data_factory_with_resize(env):
    return search(env, "data.resize applies to the built-in datasets; a data factory's samples",
                  data={"factory": "factories:digits_factory", "resize": 16})


@case
def case_crop_augment_on_feature_vectors(env):
    return search(env, r"data.augment 'crop' crops images \[C, H, W\]; these samples are \[64\]",
                  data={"factory": "factories:digit_features", "augment": "crop"},
                  model={"factory": "factories:feature_mlp"})


@case
def case_model_kwargs_torch_rejects(env):
    """torch warns (zero-element tensors) before failing: the warning must not reach stderr."""
    return search(env, r"the model rejects inputs of shape \[1, 8, 8\]",
                  model={"name": "mnist_cnn", "kwargs": {"width": 0}})


@case
def case_model_with_no_prunable_layer(env):
    return search(env, "no prunable unit", model={"factory": "factories:linear_only"})


@case
def case_input_shape_rejected(env):
    return search(env, r"rejects inputs of shape \[1, 8, 8\]", model={"factory": "factories:needs_28x28"})


@case
def case_input_shape_does_not_match_data(env):
    return search(env, "does not match the data", model={"name": "mnist_cnn", "input_shape": [3, 8, 8]})


@case
def case_empty_dataset(env):
    return search(env, "split is empty", data={"factory": "factories:empty_data_factory"})


@case
def case_labels_out_of_range(env):
    return search(env, "outputs 10 classes but the dataset has 16",
                  model={"factory": "factories:tiny_cnn"}, data={"factory": "factories:big_labels_factory"})


@case
def case_float_labels(env):
    return search(env, "labels must be integer class indices .*float32",
                  model={"factory": "factories:tiny_cnn"}, data={"factory": "factories:float_labels_factory"})


# ------------------------------------------------------------------------------ checkpoints


@case
def case_missing_checkpoint(env):
    return search(env, "checkpoint .*nope.pt' does not exist",
                  model={"name": "mnist_cnn", "kwargs": {"width": 8}, "checkpoint": str(env.tmp / "nope.pt")})


@case
def case_checkpoint_for_another_model(env):
    from autoprune.models.zoo import build_model

    ckpt = env.tmp / "wide.pt"
    torch.save(build_model("mnist_cnn", kwargs={"width": 16}, in_channels=1, num_classes=10).state_dict(), ckpt)
    return search(env, "does not match the model",
                  model={"name": "mnist_cnn", "kwargs": {"width": 8}, "checkpoint": str(ckpt)})


@case
def case_checkpoint_not_a_state_dict(env):
    ckpt = env.tmp / "garbage.pt"
    ckpt.write_bytes(b"\x00not a torch file")
    return search(env, "cannot be read as a state_dict",
                  model={"name": "mnist_cnn", "kwargs": {"width": 8}, "checkpoint": str(ckpt)})


class Mkdir:
    """A pickle that creates a directory when unpickled: what ``weights_only=True`` must refuse."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_the_malicious_pickle_runs_without_weights_only(tmp_path):
    """Control for the two malicious-pickle cases: a plain ``torch.load`` would execute it."""
    torch.save({"state_dict": Mkdir(tmp_path / "pwned")}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / "pwned").is_dir()


@case
def case_checkpoint_with_a_malicious_pickle(env):
    ckpt, marker = env.tmp / "evil.pt", env.tmp / "pwned"
    torch.save({"state_dict": Mkdir(marker)}, ckpt)
    c = search(env, "cannot be read as a state_dict",
               model={"name": "mnist_cnn", "kwargs": {"width": 8}, "checkpoint": str(ckpt)})
    c.watch.append(marker)  # never created: the pickle was not executed
    return c


# -------------------------------------------------------------------------------------- LUTs


def lut_file(env: Env, mutate: Callable[[dict], None] | None = None, model=None) -> str:
    """A synthetic LUT (MAC-proportional entries) for the tiny config's model, optionally broken."""
    from autoprune.core.graph import build_unit_graph
    from autoprune.latency.lut import Lut, make_header, tabulate
    from autoprune.models.zoo import build_model

    model = model or build_model("mnist_cnn", kwargs={"width": 8}, in_channels=1, num_classes=10)
    graph = build_unit_graph(model.eval(), SHAPE)
    info = {m.name: m for m in graph.modules}

    def ms(name, i, o):
        m = info[name]
        return 1e-6 * m.macs * (o / m.out_ch) * (i / m.in_ch) + 0.001

    data = Lut(make_header(graph, remainder_ms=0.05), tabulate(graph, ms, step=4)).to_dict()
    if mutate:
        mutate(data)
    path = env.tmp / "lut.json"
    path.write_text(json.dumps(data))
    return str(path)


def latency_search(env: Env, message: str, lut: str, value: float = 0.6) -> Case:
    return search(env, message, budget={"latency": value, "lut": lut})


@case
def case_latency_budget_below_lut_minimum(env):
    return latency_search(env, "budget latency=0.02 is below what this model can reach: .* the time outside conv/linear", lut_file(env), 0.02)


@case
def case_lut_for_another_model(env):
    from factories import TinyCNN

    return latency_search(env, "LUT .* was built for a different model", lut_file(env, model=TinyCNN()))


@case
def case_lut_missing_entry(env):
    def drop(d):
        d["modules"][1]["ms"][0][0] = None

    return latency_search(env, "missing, NaN or negative entry", lut_file(env, drop))


@case
def case_lut_missing_row(env):
    def ragged(d):
        d["modules"][0]["ms"].pop()

    return latency_search(env, "entries are missing", lut_file(env, ragged))


@case
def case_lut_negative_entry(env):
    def negative(d):
        d["modules"][0]["ms"][0][0] = -0.1

    return latency_search(env, r"negative entry \(-0.1\)", lut_file(env, negative))


@case
def case_lut_nan_entry(env):
    def nan(d):
        d["modules"][2]["ms"][0][0] = math.nan

    return latency_search(env, r"NaN or negative entry \(nan\)", lut_file(env, nan))


@case
def case_lut_does_not_exist(env):
    return latency_search(env, "LUT .* does not exist; build one", str(env.tmp / "none.json"))


@case
def case_lut_not_json(env):
    path = env.tmp / "lut.json"
    path.write_text("header: yaml, not json\n")
    return latency_search(env, "LUT .* is not valid JSON", str(path))


# ----------------------------------------------------------------------------- resume dirs


def resume(run: Path, *extra: str) -> list[str]:
    return ["search", "--resume", str(run), "--no-progress", *extra]


@case
def case_resume_corrupted_trials(env):
    run = env.finished()
    (run / "trials.parquet").write_bytes(b"PAR1 not parquet at all")
    return Case(resume(run), "trials.parquet' is corrupted .*delete it to restart", [run])


@case
def case_resume_corrupted_ddpg_checkpoint(env):
    run = env.finished("ddpg")
    ckpt = run / "ddpg" / "checkpoint.pkl"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated, as a non-atomic writer would leave it
    return Case(resume(run), "checkpoint.pkl' is unreadable .*delete it to restart", [run])


@case
def case_resume_ddpg_checkpoint_not_ours(env):
    import pickle

    run = env.finished("ddpg")
    (run / "ddpg" / "checkpoint.pkl").write_bytes(pickle.dumps({"format": "something else"}))
    return Case(resume(run), "is not a DDPG checkpoint", [run])


@case
def case_resume_corrupted_base_model(env):
    run = env.finished()
    (run / "base_model.pt").write_bytes(b"garbage")
    return Case(resume(run), "base_model.pt' cannot be read", [run])


@case
def case_resume_with_a_different_config(env):
    run = env.finished()
    other = write_yaml(env, base(seed=1), "other.yaml")
    return Case(["search", other, "--resume", str(run), "--no-progress"], "started with a different config", [run])


@case
def case_resume_corrupted_config(env):
    run = env.finished()
    (run / "config.yaml").write_text("name: [unclosed\n")
    return Case(resume(run), "config.yaml' is not valid YAML", [run])


@case
def case_resume_not_a_run_dir(env):
    empty = env.tmp / "empty"
    empty.mkdir()
    return Case(resume(empty), "not a run directory", [empty])


@case
def case_out_dir_not_empty(env):
    run = env.finished()
    return Case(["search", write_yaml(env, base()), "--out", str(run), "--no-progress"],
                "is not empty; choose another with --out", [run])


@case
def case_unwritable_output_directory(env):
    blocker = env.tmp / "file"
    blocker.write_text("x")
    case_ = search(env, "not writable; choose another with --out", extra=["--out", str(blocker / "run")])
    case_.watch.append(blocker)
    return case_


@case
def case_unreachable_ray_address(env):
    case_ = search(env, "Ray cluster at '127.0.0.1:1' is unreachable", ray={"address": "127.0.0.1:1", "workers": 1})
    case_.max_seconds = 30
    return case_


@case
def case_unreachable_ray_address_into_empty_out_dir(env):
    out = env.tmp / "empty_out"
    out.mkdir()
    cfg = write_yaml(env, base(ray={"address": "127.0.0.1:1", "workers": 1}))
    return Case(["search", cfg, "--out", str(out), "--no-progress"], "unreachable", [out], max_seconds=30)


@case
def case_unreachable_ray_address_nested_out(env):
    """The error comes after the run dir was made: it and the parents it created are removed again."""
    out = env.tmp / "new" / "deeper" / "run"
    cfg = write_yaml(env, base(ray={"address": "127.0.0.1:1", "workers": 1}))
    return Case(["search", cfg, "--out", str(out), "--no-progress"], "unreachable", [env.tmp / "new"], max_seconds=30)


@case
def case_nan_loss_in_training(env):
    return search(env, r"train base model: loss became (nan|inf).*Lower the learning rate",
                  train={"epochs": 1, "lr": 1e30, "batch_size": 64})


# ------------------------------------------------------------------------------- CLI flags


@case
def case_bad_set_syntax(env):
    return search(env, r"--set 'train.epochs': expected KEY=VALUE", extra=["--set", "train.epochs"])


@case
def case_set_unknown_key(env):
    return search(env, r"unknown config key train\.epoch: did you mean train\.epochs\?", extra=["--set", "train.epoch=3"])


@case
def case_set_wrong_type(env):
    return search(env, "train.lr must be a number", extra=["--set", "train.lr=fast"])


@case
def case_bad_budget_short_form(env):
    return search(env, r"--budget 'flops:0.5': expected KIND=VALUE", extra=["--budget", "flops:0.5"])


@case
def case_budget_short_form_not_a_number(env):
    return search(env, r"--budget 'flops=half': 'half' is not a number", extra=["--budget", "flops=half"])


@case
def case_budget_short_form_unknown_kind(env):
    return search(env, r"unknown config key budget\.flop: did you mean budget\.flops\?", extra=["--budget", "flop=0.5"])


@case
def case_workers_not_a_number(env):
    return search(env, "ray.workers must be an integer", extra=["--workers", "many"])


@case
def case_argparse_bad_int(env):
    return search(env, r"argument --seed: invalid int value: 'x'", extra=["--seed", "x"])


@case
def case_unknown_command(env):
    return Case(["serch", "exp.yaml"], "invalid choice: 'serch'")


@case
def case_search_without_config_or_resume(env):
    return Case(["search", "--out", str(env.tmp / "run")], "give an experiment CONFIG", [env.tmp / "run"])


@case
def case_train_out_under_a_file(env):
    blocker = env.tmp / "file"
    blocker.write_text("x")
    return Case(["train", write_yaml(env, base()), "--out", str(blocker / "m.pt")], "not writable", [blocker])


@case
def case_run_bad_budget_list(env):
    out = env.tmp / "exp_out"
    cfg = write_yaml(env, base(budgets=["flops:0.5"]))
    return Case(["run", cfg, "--out", str(out)], "expected KIND=VALUE", [out])


@case
def case_run_global_with_a_criterion_that_needs_data(env):
    out = env.tmp / "exp_out"
    cfg = write_yaml(env, base(searchers=["random", "global"], pruning={"criterion": "apoz"}))
    return Case(["run", cfg, "--out", str(out)], "searcher global ranks channels without data", [out])


# ------------------------------------------------------------------ lut / export / compare


@case
def case_lut_check_on_a_parquet_file(env):
    run = env.finished()
    return Case(["lut", "check", "--lut", str(run / "trials.parquet"), "--model", "factories:tiny_cnn"],
                "LUT .* is not valid JSON", [run])


@case
def case_lut_check_on_a_directory(env):
    run = env.finished()
    return Case(["lut", "check", "--lut", str(run), "--model", "factories:tiny_cnn"], "LUT .*", [run])


@case
def case_lut_build_bad_input_shape(env):
    out = env.tmp / "lut.json"
    return Case(["lut", "build", "--model", "factories:tiny_cnn", "--input-shape", "1x0x8", "--out", str(out)],
                "--input-shape must be one sample's shape, positive integers", [out])


@case
def case_lut_build_shape_the_model_rejects(env):
    out = env.tmp / "lut.json"
    return Case(["lut", "build", "--model", "factories:tiny_cnn", "--input-shape", "8x8", "--out", str(out)],
                r"the model rejects inputs of shape \[8, 8\]", [out])


@case
def case_export_not_a_run_dir(env):
    d = env.tmp / "somewhere"
    d.mkdir()
    return Case(["export", str(d)], "has no pruned_model.pt; give a finished run directory", [d])


@case
def case_export_corrupted_pruned_model(env):
    run = env.finished()
    (run / "pruned_model.pt").write_bytes(b"junk")
    return Case(["export", str(run)], "pruned_model.pt' is not a readable pruned model", [run])


@case
def case_export_state_dict_instead_of_pruned_model(env):
    run = env.finished()
    shutil.copy(run / "base_model.pt", run / "pruned_model.pt")
    return Case(["export", str(run)], "is not an autoprune pruned model", [run])


@case
def case_export_pruned_model_with_a_malicious_pickle(env):
    run = env.finished()
    torch.save({"format": "autoprune.pruned/v1", "model": Mkdir(env.tmp / "pwned")}, run / "pruned_model.pt")
    return Case(["export", str(run)], "is not a readable pruned model", [run, env.tmp / "pwned"])


@case
def case_export_pruned_model_naming_a_broken_factory(env):
    """A pruned model names its factory; loading it imports and calls that code (README: safety)."""
    run = env.finished()
    payload = torch.load(run / "pruned_model.pt", weights_only=True)
    payload["model"].update(name=None, factory="factories:raising_factory")
    torch.save(payload, run / "pruned_model.pt")
    return Case(["export", str(run)], "model factory 'factories:raising_factory' failed: RuntimeError: boom", [run])


@case
def case_compare_missing_path(env):
    return Case(["compare", str(env.tmp / "nope")], "is not a directory", [env.tmp / "nope"])


@case
def case_compare_a_file(env):
    path = env.tmp / "exp.yaml"
    path.write_text("name: x\n")
    return Case(["compare", str(path)], "is not a directory; give run dirs", [path])


@case
def case_compare_dir_without_runs(env):
    d = env.tmp / "empty"
    d.mkdir()
    return Case(["compare", str(d)], r"no finished runs \(summary.json\)", [d])


@case
def case_compare_corrupted_summary(env):
    run = env.finished()
    (run / "summary.json").write_text("{not json")
    return Case(["compare", str(run)], "summary.json' is missing or not valid JSON", [run])


@case
def case_compare_corrupted_trials(env):
    run = env.finished()
    (run / "trials.parquet").write_bytes(b"nope")
    return Case(["compare", str(run)], "trials.parquet' is corrupted", [run])


@case
def case_resume_corrupted_run_state(env):
    run = env.finished()
    (run / "run_state.json").write_text("{not json")
    return Case(resume(run), r"run_state.json is corrupted; delete it to resume without the earlier", [run])


@case
def case_resume_run_state_with_a_negative_time(env):
    run = env.finished()
    state = json.loads((run / "run_state.json").read_text())
    state["segments"][0]["seconds"] = -5.0
    (run / "run_state.json").write_text(json.dumps(state))
    return Case(resume(run), r"run_state.json is corrupted", [run])


@case
def case_searcher_flag_unknown_name(env):
    return search(env, r"unknown searcher 'ddgp' \(did you mean 'ddpg'\?\)", ["--searcher", "ddgp"])


@case
def case_searcher_flag_carries_a_budget_the_new_searcher_refuses(env):
    """``evaluations: 6`` becomes ``episodes: 6``; not a multiple of 4 parallel episodes: the error, no note."""
    return search(env, r"searcher.episodes to 4 or 8 \(now 6\)",
                  ["--searcher", "ddpg", "--set", "searcher.parallel_episodes=4"],
                  searcher={"name": "random", "evaluations": 6})


# ------------------------------------------------------------------------- runtime and GPUs


@case
def case_runtime_device_misspelled(env):
    return search(env, r"runtime\.device 'cdua' is not a valid value; did you mean cuda\?", runtime={"device": "cdua"})


@case
def case_runtime_device_bad_index(env):
    return search(env, r"runtime\.device 'cuda:x' is not a valid value", runtime={"device": "cuda:x"})


@case
def case_runtime_amp_misspelled(env):
    return search(env, r"runtime\.amp 'bf61' is not a valid value; did you mean bf16\?", runtime={"amp": "bf61"})


@case
def case_runtime_key_misspelled(env):
    return search(env, r"unknown config key runtime\.channel_last: did you mean runtime\.channels_last\?",
                  runtime={"channel_last": True})


@case
def case_runtime_negative_num_workers(env):
    return search(env, r"runtime\.num_workers must be >= 0 \(got -1\)", runtime={"num_workers": -1})


@case
def case_ray_negative_gpus_per_worker(env):
    return search(env, r"ray\.gpus_per_worker must be >= 0 \(got -1", ray={"gpus_per_worker": -1})


@case
def case_negative_evaluation_finetune_steps(env):
    return search(env, r"evaluation\.finetune_steps must be >= 0 \(got -1\)",
                  evaluation={"adaptive_bn_batches": 4, "finetune_steps": -1})


@case
def case_global_ranking_with_a_criterion_that_needs_data(env):
    return search(env, r"searcher global ranks channels without data; criterion 'taylor' needs calibration",
                  searcher={"name": "global"}, pruning={"criterion": "taylor"})


@case
def case_runtime_fp16_on_the_cpu(env):
    return search(env, r"runtime\.amp: fp16 needs a GPU", runtime={"device": "cpu", "amp": "fp16"})


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished tiny run dirs (random, ddpg), made once for the module; cases copy them."""
    root = tmp_path_factory.mktemp("finished")
    runs = {}
    searchers = {"random": {"name": "random", "evaluations": 2},
                 "ddpg": {"name": "ddpg", "episodes": 4, "warmup": 2, "hidden": [8, 8], "batch_size": 4,
                          "replay_episodes": 4, "checkpoint_every": 2}}
    for kind, searcher in searchers.items():
        cfg = root / f"{kind}.yaml"
        cfg.write_text(yaml.safe_dump(base(searcher=searcher)))
        runs[kind] = root / kind
        assert main(["search", str(cfg), "--out", str(runs[kind]), "--no-progress"]) == 0
    assert (runs["ddpg"] / "ddpg" / "checkpoint.pkl").is_file()
    return runs


def snapshot(paths: list[Path]) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory under ``paths``; absent paths are absent."""
    out: dict[str, bytes | None] = {}
    for root in paths:
        if root.is_file():
            out[str(root)] = root.read_bytes()
        elif root.is_dir():
            out[str(root)] = None
            for p in root.rglob("*"):
                out[str(p)] = p.read_bytes() if p.is_file() else None
    return out


def check_error(code: int, stderr: str, expected: Case) -> str:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("autoprune: error: "), lines[0]
    assert re.search(expected.message, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, capsys, request, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    c = CASES[name](Env(tmp_path, request))
    before = snapshot(c.watch)
    capsys.readouterr()
    start = time.time()
    code = main(c.argv)
    elapsed = time.time() - start
    check_error(code, capsys.readouterr().err, c)
    assert snapshot(c.watch) == before, "the output was touched"
    if c.max_seconds is not None:
        assert elapsed < c.max_seconds


def test_the_catalogue_is_long_enough():
    assert len(CASES) >= 25


SUBPROCESS_CASES = ["config_not_valid_yaml", "factory_raises", "resume_corrupted_trials", "model_kwargs_torch_rejects"]


def _cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_in_a_subprocess(name, tmp_path, request):
    c = CASES[name](Env(tmp_path, request))
    before = snapshot(c.watch)
    proc = _cli(c.argv, tmp_path)
    check_error(proc.returncode, proc.stderr, c)
    assert snapshot(c.watch) == before


def test_debug_shows_the_traceback(tmp_path, request):
    c = CASES["factory_raises"](Env(tmp_path, request))
    with pytest.raises(AutopruneError, match="boom"):
        main(["--debug", *c.argv])
    proc = _cli(["--debug", *c.argv], tmp_path)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: boom" in proc.stderr


def test_nan_loss_in_finetuning_leaves_a_complete_run_dir(tmp_path, capsys):
    """The documented exception to "untouched": the search finished, so its results are kept."""
    from autoprune import load_pruned
    from autoprune.core.train import dataset_accuracy

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(base(finetune={"epochs": 1, "lr_scale": 1e32})))
    out = tmp_path / "run"
    assert main(["search", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoprune: error: fine-tune: loss became"), err
    assert "Lower the learning rate" in err[0] and "pruned weights from before the failed fine-tune" in err[0]
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "trials.parquet", "best_plan.json", "pruned_model.pt", "summary.json"} <= names
    assert not list(out.glob("*.tmp"))
    summary = json.loads((out / "summary.json").read_text())
    assert "loss became" in summary["finetune_failed"]
    assert summary["pruned"]["test_accuracy_after_finetune"] is None
    model = load_pruned(out / "pruned_model.pt")  # the last good weights: the pruned model before fine-tuning
    assert all(torch.isfinite(p).all() for p in model.parameters())
    from autoprune.config import load_config
    from autoprune.data.datasets import load_data

    test = load_data(load_config(str(cfg)).data).test
    assert dataset_accuracy(model, test) == summary["pruned"]["test_accuracy_before_finetune"]
    assert sum(p.numel() for p in model.parameters()) == summary["pruned"]["params"]
