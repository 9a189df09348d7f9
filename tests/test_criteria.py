"""Every channel criterion removes the channel made useless in a constructed case."""

from __future__ import annotations

import pytest
import torch
from factories import TinyCNN
from torch import nn

from autoprune.config import PruningConfig
from autoprune.core.criteria import CRITERIA, get_criterion
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import channel_prune

SHAPE = (1, 8, 8)
USELESS = 3


def calibration(n_batches: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, *SHAPE, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(n_batches)]


def tiny_cnn(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):  # non-trivial BN so every criterion sees some spread
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def removed_from_conv1(model: nn.Module, criterion_name: str, cfg: PruningConfig | None = None) -> list[int]:
    """Prune conv1 (8 channels) by one channel with the named criterion; return what was removed."""
    cfg = cfg or PruningConfig(criterion=criterion_name)
    graph = build_unit_graph(model, SHAPE)
    plan = PruningPlan.from_counts(graph, {"conv1": 7})
    log: list = []
    channel_prune(model, graph, plan, get_criterion(cfg), calibration(), log)
    return dict(log)["conv1"]


@pytest.mark.parametrize("name", ["l1", "l2", "lp"])
def test_magnitude_criteria_remove_zeroed_filter(name):
    model = tiny_cnn()
    with torch.no_grad():
        model.conv1.weight[USELESS] = 0
        model.bn1.weight[USELESS] = 0
        model.bn1.bias[USELESS] = 0
        model.conv2.weight[:, USELESS] = 0
    assert removed_from_conv1(model, name, PruningConfig(criterion=name, p=3.0)) == [USELESS]


def test_bn_scale_removes_zero_gamma():
    model = tiny_cnn()
    with torch.no_grad():
        model.conv1.weight[USELESS] *= 10  # largest filter: magnitude would keep it
        model.bn1.weight[USELESS] = 0
    assert removed_from_conv1(model, "l1") != [USELESS]
    assert removed_from_conv1(model, "bn_scale") == [USELESS]


def test_apoz_removes_always_zero_channel():
    model = tiny_cnn()
    with torch.no_grad():
        model.conv1.weight[USELESS] *= 10
        model.bn1.bias[USELESS] = -1000.0  # post-ReLU output is always zero
    assert removed_from_conv1(model, "l1") != [USELESS]
    assert removed_from_conv1(model, "apoz") == [USELESS]


@pytest.mark.parametrize("name", ["taylor", "hessian"])
def test_loss_based_criteria_remove_channel_without_effect(name):
    model = tiny_cnn()
    with torch.no_grad():
        model.conv1.weight[USELESS] *= 10  # big weights, but nothing downstream reads the channel
        model.conv2.weight[:, USELESS] = 0
    assert removed_from_conv1(model, "bn_scale") != [USELESS]
    assert removed_from_conv1(model, name) == [USELESS]


class DupNet(nn.Module):
    """conv1 -> ReLU -> conv2 with conv1 channel 5 an exact copy of channel 2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)
        with torch.no_grad():
            self.conv1.weight[5] = self.conv1.weight[2] * 0.1  # small: magnitude would not pick it...
            self.conv1.bias[5] = self.conv1.bias[2] * 0.1
            self.conv1.weight[2] *= 0.1
            self.conv1.bias[2] *= 0.1
            self.conv1.weight[:2] *= 0.05  # ...and these are smaller still
            self.conv1.bias[:2] *= 0.05

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.relu(x).mean((2, 3)))


def conv2_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.conv2(torch.relu(model.conv1(x)))


def test_reconstruction_removes_duplicate_and_refit_lowers_error():
    from autoprune.core.criteria.data_driven import Reconstruction

    class NoRefit(Reconstruction):
        def after_prune(self, model, batches):
            self.layers = {}

    model = DupNet().eval()
    graph = build_unit_graph(model, SHAPE)
    plan = PruningPlan.from_counts(graph, {"conv1": 5})
    batches = calibration()
    assert dict(_prune(model, graph, plan, get_criterion(PruningConfig(criterion="l1")), batches))["conv1"][0] in (0, 1)
    log: list = []
    refit = channel_prune(model, graph, plan, Reconstruction(), batches, log)
    assert dict(log)["conv1"][0] in (2, 5)
    plain = channel_prune(model, graph, plan, NoRefit(), batches)
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(7))  # held-out inputs
    target = conv2_output(model, x)
    err_refit = (conv2_output(refit, x) - target).pow(2).mean().item()
    err_plain = (conv2_output(plain, x) - target).pow(2).mean().item()
    assert err_refit < 1e-6 * target.pow(2).mean().item()
    assert err_refit < err_plain


def _prune(model, graph, plan, criterion, batches):
    log: list = []
    channel_prune(model, graph, plan, criterion, batches, log)
    return log


def test_every_criterion_is_registered_and_prunes_a_residual_net():
    from factories import TinyResidual

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    plan = PruningPlan.from_ratios(graph, 0.5)
    x = torch.randn(4, *SHAPE)
    for name in ["l1", "l2", "lp", "apoz", "taylor", "hessian", "reconstruction"]:
        assert name in CRITERIA
        pruned = channel_prune(model, graph, plan, get_criterion(PruningConfig(criterion=name)), calibration())
        assert pruned(x).shape == (4, 10)
        assert pruned.a1.out_channels == plan.channels["a1"]


def test_bn_scale_without_batchnorm_is_a_clear_error():
    from factories import TinyResidual

    from autoprune.errors import AutopruneError

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    with pytest.raises(AutopruneError, match="no BatchNorm"):
        channel_prune(model, graph, PruningPlan.from_ratios(graph, 0.5), get_criterion(PruningConfig(criterion="bn_scale")))
