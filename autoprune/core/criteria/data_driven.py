"""Data-driven channel criteria: ``apoz``, ``taylor``, ``hessian`` and ``reconstruction``.

All of them look at the model on the calibration batches (``pruning.calibration_batches`` fixed
training batches) in eval mode:

* ``taylor``: first-order Taylor |w * dL/dw| summed over the coupled group (torch-pruning's
  ``GroupTaylorImportance``), gradients of the cross-entropy on the calibration batches.
* ``hessian``: OBD-style w^2 * H_diag with the diagonal Hessian approximated by the empirical
  Fisher (mean squared per-sample gradient, at most ``HESSIAN_SAMPLES`` samples), scored by
  torch-pruning's ``GroupHessianImportance``. We accumulate the squared gradients ourselves
  (its ``accumulate_grad`` keys its buffer by name but looks it up by parameter, so in 1.6.1 it
  keeps only the last sample).
* ``apoz``: 1 - average percentage of zeros of the channel's post-activation output, read at
  the input of every conv/linear layer that consumes the channel (Hu et al. 2016).
* ``reconstruction``: ThiNet / He et al. (2017) style. For each unit, channels are removed one
  at a time, greedily, in the order that least increases the least-squares reconstruction error
  of the consuming layers' outputs when their weights are re-fitted (closed-form group OBS
  downdates of the inverse Gram matrix); after pruning, every consuming layer is re-fitted by
  least squares so its output on the calibration data matches the unpruned model's output.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.config import PruningConfig
from autoprune.core.criteria.base import CRITERIA, Batch, Criterion, TorchPruningImportance

log = logging.getLogger(__name__)

HESSIAN_SAMPLES = 32
MAX_ROWS = 2048  # sampled output positions per layer for least squares


def _in_consumers(group: tp.Group, known: dict) -> list[tuple[nn.Module, list[int], list[int]]]:
    """(module, input idxs, root idxs) of every layer in ``known`` that takes the group's channels as input."""
    out = []
    for item in group:
        module = item.dep.target.module
        if module in known and getattr(item.dep.handler, "__name__", "") == "prune_in_channels":
            out.append((module, list(item.idxs), list(item.root_idxs)))
    return out


def _scoreable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and not isinstance(module.padding, str)


class Taylor(TorchPruningImportance):
    """First-order Taylor importance on the calibration batches."""

    needs_data = True

    def __init__(self) -> None:
        super().__init__(tp.importance.GroupTaylorImportance(normalizer=None))

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        model.eval()
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            (F.cross_entropy(model(x), y) / len(batches)).backward()


class Hessian(TorchPruningImportance):
    """Diagonal second-order (OBD) importance with an empirical-Fisher Hessian."""

    needs_data = True

    def __init__(self) -> None:
        super().__init__(tp.importance.GroupHessianImportance(normalizer=None))

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        self.importance.zero_grad()
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        sq = [torch.zeros_like(p) for p in params]
        x = torch.cat([b[0] for b in batches])[:HESSIAN_SAMPLES]
        y = torch.cat([b[1] for b in batches])[:HESSIAN_SAMPLES]
        losses = F.cross_entropy(model(x), y, reduction="none")
        for i, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
            for acc, g in zip(sq, grads, strict=True):
                if g is not None:
                    acc.add_(g.pow(2))
        for p, acc in zip(params, sq, strict=True):
            p.grad = acc / len(losses)  # GroupHessianImportance reads H_diag from .grad


class APoZ(Criterion):
    """1 - average percentage of zeros of each channel at the inputs of its consumers."""

    needs_data = True

    def __init__(self) -> None:
        self.zeros: dict[nn.Module, torch.Tensor] = {}

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        sums: dict[nn.Module, torch.Tensor] = {}
        counts: dict[nn.Module, int] = {}

        def hook(mod, inputs):
            x = inputs[0].detach()
            z = (x == 0).float()
            per = z.transpose(0, 1).flatten(1).mean(1) if isinstance(mod, nn.Conv2d) else z.flatten(0, -2).mean(0)
            sums[mod] = sums.get(mod, 0) + per
            counts[mod] = counts.get(mod, 0) + 1

        handles = [m.register_forward_pre_hook(hook) for m in model.modules() if _scoreable(m)]
        model.eval()
        try:
            with torch.no_grad():
                for x, _ in batches:
                    model(x)
        finally:
            for h in handles:
                h.remove()
        self.zeros = {m: (sums[m] / counts[m]).cpu() for m in sums}  # scored on the CPU

    def scores(self, group: tp.Group) -> torch.Tensor | None:
        n = len(group[0].idxs)
        total, seen = torch.zeros(n), torch.zeros(n)
        for module, idxs, roots in _in_consumers(group, self.zeros):
            total.scatter_add_(0, torch.tensor(roots), self.zeros[module][idxs])
            seen.scatter_add_(0, torch.tensor(roots), torch.ones(len(roots)))
        if not bool((seen > 0).all()):
            return None  # some channel feeds no conv/linear (nothing to measure)
        return 1.0 - total / seen


class _LayerData:
    """Sampled input patches and original outputs of one consuming layer."""

    def __init__(self, module: nn.Module, x: torch.Tensor, gen: torch.Generator) -> None:
        a = _patches(module, x)
        self.rows = torch.randperm(a.shape[0], generator=gen)[: max(MAX_ROWS, 2 * a.shape[1])]
        self.a = a[self.rows.to(a.device)].double().cpu()  # the least squares run on the CPU, in float64
        w = _weight_matrix(module).double().cpu()
        self.y = self.a @ w  # original output (without bias) at the sampled positions
        self.w = w
        self.kk = a.shape[1] // module.weight.shape[1]
        self.removed_in: list[int] = []
        self.removed_out: list[int] = []


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows = output positions, columns = the layer's inputs (``C * kh * kw`` for a conv)."""
    if isinstance(module, nn.Linear):
        return x.detach().flatten(0, -2)
    cols = F.unfold(x.detach(), module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).flatten(0, 1)


def _weight_matrix(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().flatten(1).t()  # [inputs, outputs]


class Reconstruction(Criterion):
    """Greedy least-squares channel selection plus least-squares re-fit of the consuming layers."""

    needs_data = True

    def __init__(self, ridge: float = 1e-6) -> None:
        self.ridge = ridge
        self.layers: dict[nn.Module, _LayerData] = {}
        self.fallback = TorchPruningImportance(tp.importance.GroupMagnitudeImportance(p=2, normalizer=None))

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        gen = torch.Generator().manual_seed(0)
        self.layers = {}

        def hook(mod, inputs):
            self.layers[mod] = _LayerData(mod, inputs[0], gen)

        self._forward(model, batches, hook)

    def _forward(self, model: nn.Module, batches: Sequence[Batch], hook) -> None:
        handles = [m.register_forward_pre_hook(hook) for m in model.modules() if _scoreable(m)]
        model.eval()
        try:
            with torch.no_grad():
                model(torch.cat([b[0] for b in batches]))
        finally:
            for h in handles:
                h.remove()

    def _columns(self, data: _LayerData, idxs: list[int], roots: list[int], n: int) -> list[list[int]]:
        cols: list[list[int]] = [[] for _ in range(n)]
        for i, r in zip(idxs, roots, strict=True):
            cols[r].extend(range(i * data.kk, (i + 1) * data.kk))
        return cols

    def scores(self, group: tp.Group) -> torch.Tensor | None:
        n = len(group[0].idxs)
        consumers = _in_consumers(group, self.layers)
        if not consumers:
            log.info("reconstruction: unit %s feeds no conv/linear; using L2 magnitude", group[0].dep.target.name)
            return self.fallback.scores(group)
        states = [_EliminationState(self.layers[m], self._columns(self.layers[m], i, r, n), self.ridge)
                  for m, i, r in consumers]
        order = torch.zeros(n)
        alive = list(range(n))
        for step in range(n - 1):
            cost = torch.stack([torch.tensor([s.cost(c) for c in alive]) for s in states]).sum(0)
            best = alive[int(torch.argmin(cost))]
            for s in states:
                s.remove(best)
            order[best] = step
            alive.remove(best)
        order[alive[0]] = n - 1
        return order

    def selected(self, group: tp.Group) -> None:
        for item in group:
            data = self.layers.get(item.dep.target.module)
            fn = getattr(item.dep.handler, "__name__", "")
            if data is not None and fn == "prune_in_channels":
                data.removed_in.extend(item.idxs)
            elif data is not None and fn == "prune_out_channels":
                data.removed_out.extend(item.idxs)

    def after_prune(self, model: nn.Module, batches: Sequence[Batch] | None) -> None:
        """Re-fit every layer that lost inputs, in forward order, to its original outputs."""
        if not batches:
            return

        def hook(mod, inputs):
            data = self.layers.get(mod)
            if data is not None and data.removed_in:
                _refit(mod, data, _patches(mod, inputs[0])[data.rows.to(inputs[0].device)].double().cpu())

        self._forward(model, batches, hook)
        self.layers = {}


class _EliminationState:
    """Inverse Gram matrix and optimal weights of one layer while channels are removed."""

    def __init__(self, data: _LayerData, cols: list[list[int]], ridge: float) -> None:
        gram = data.a.t() @ data.a
        scale = float(gram.diagonal().mean()) or 1.0
        self.h = torch.linalg.inv(gram + ridge * scale * torch.eye(gram.shape[0], dtype=gram.dtype))
        self.w = data.w.clone()
        self.norm = float((data.y ** 2).sum()) or 1.0
        self.cols = cols
        self.active = torch.ones(gram.shape[0], dtype=torch.bool)

    def cost(self, channel: int) -> float:
        g = self.cols[channel]
        if not g:
            return 0.0
        hg = self.h[g][:, g]
        wg = self.w[g]
        return float(torch.trace(wg.t() @ torch.linalg.solve(hg, wg))) / self.norm

    def remove(self, channel: int) -> None:
        g = self.cols[channel]
        if not g:
            return
        hg_inv = torch.linalg.inv(self.h[g][:, g])
        h_cg = self.h[:, g]
        self.w -= h_cg @ hg_inv @ self.w[g]
        self.h -= h_cg @ hg_inv @ self.h[g]
        self.h[g] = 0.0
        self.h[:, g] = 0.0
        self.w[g] = 0.0


def _refit(module: nn.Module, data: _LayerData, a_new: torch.Tensor) -> None:
    keep_out = [i for i in range(data.y.shape[1]) if i not in set(data.removed_out)]
    y = data.y[:, keep_out]
    if module.bias is not None:
        y = y + module.bias.detach().double().cpu()[None, :]  # the (already pruned) original bias
        a_new = torch.cat([a_new, torch.ones(len(a_new), 1, dtype=a_new.dtype)], 1)
    sol = torch.linalg.lstsq(a_new, y, driver="gelsd").solution
    if module.bias is not None:
        module.bias.data.copy_(sol[-1].to(module.bias.dtype))
        sol = sol[:-1]
    module.weight.data.copy_(sol.t().reshape(module.weight.shape).to(module.weight.dtype))


@CRITERIA.register("taylor")
def taylor(cfg: PruningConfig) -> Criterion:
    """First-order Taylor expansion of the loss (Molchanov et al. 2019), on calibration batches."""
    return Taylor()


@CRITERIA.register("hessian")
def hessian(cfg: PruningConfig) -> Criterion:
    """Diagonal second-order (OBD-style) saliency w^2 * H_diag, empirical-Fisher Hessian."""
    return Hessian()


@CRITERIA.register("apoz")
def apoz(cfg: PruningConfig) -> Criterion:
    """Average percentage of zeros of the post-activation output (fewer zeros = more important)."""
    return APoZ()


@CRITERIA.register("reconstruction")
def reconstruction(cfg: PruningConfig) -> Criterion:
    """Least-squares channel selection and re-fit of the next layer (ThiNet / He et al. 2017)."""
    return Reconstruction()
