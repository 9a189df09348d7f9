"""Tracing a model: its conv/linear layers in forward order, attention's token counts,
torch-pruning's dependency graph, and the trial cuts that find units whose pruning breaks the
forward pass (what :func:`autoprune.core.graph.build_unit_graph` is built from)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

log = logging.getLogger(__name__)

PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def example_input(input_shape: Sequence[int], batch: int = 1, model: nn.Module | None = None) -> torch.Tensor:
    """A random input batch, on the device of ``model``'s parameters when given (else the CPU)."""
    device = next((p.device for p in model.parameters()), None) if model is not None else None
    return torch.randn(batch, *input_shape).to(device or "cpu")


def build_dependency_graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # torch-pruning traces the autograd graph
            return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input(input_shape, model=model), verbose=False
        )
    finally:
        model.train(was_training)


def forward_with_hooks(model: nn.Module, input_shape: Sequence[int], hook) -> None:
    """One eval-mode, no-grad forward of a batch-1 input with ``hook(name, mod, inp, out)`` on every
    conv/linear; the model's mode is restored and the hooks removed."""
    _run_hooked(model, input_shape, [m.register_forward_hook(lambda mod, inp, out, name=n: hook(name, mod, inp, out))
                                     for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)])


def _run_hooked(model: nn.Module, input_shape: Sequence[int], handles: list) -> None:
    """One eval-mode, no-grad forward of a batch-1 input; then the mode is restored and ``handles``
    (hooks registered by the caller) removed."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(input_shape, model=model))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def execution_order(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, nn.Module, tuple, tuple]]:
    """(name, module, input shape, output shape) of every conv/linear, in forward order."""
    records: list[tuple[str, nn.Module, tuple, tuple]] = []
    forward_with_hooks(model, input_shape,
                       lambda name, mod, inp, out: records.append((name, mod, tuple(inp[0].shape), tuple(out.shape))))
    seen, unique = set(), []
    for rec in records:  # a module called twice counts once (shared layers)
        if rec[0] not in seen:
            seen.add(rec[0])
            unique.append(rec)
    return unique


def attention_tokens(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Query tokens per sample of every ``nn.MultiheadAttention`` (one batch-1 forward; empty
    without attention). Its projections run as ``F.linear`` calls that no Linear hook sees."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    if not found:
        return {}
    tokens: dict[str, int] = {}

    def hook(name, mod, args, kwargs, _out):
        query = args[0] if args else kwargs.get("query")
        if query is not None and name not in tokens:
            tokens[name] = int(query.numel() // mod.embed_dim)

    _run_hooked(model, input_shape, [
        m.register_forward_hook(lambda mod, a, kw, out, n=n: hook(n, mod, a, kw, out), with_kwargs=True)
        for n, m in found.items()])
    return tokens


def in_projections(mha: nn.MultiheadAttention) -> list[torch.Tensor]:
    if mha.in_proj_weight is not None:
        return [mha.in_proj_weight]
    return [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]


def _prunes_cleanly(model: nn.Module, input_shape: tuple[int, ...], units: Sequence[tuple[str, int, int]]) -> bool:
    """Whether a copy of ``model`` with each ``(unit, channels, blocks)`` cut to about half (the same
    positions of every block) still runs a forward pass."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    try:
        dg = build_dependency_graph(pruned, input_shape)
        for name, channels, blocks in units:
            width = channels // blocks
            drop = [b * width + p for b in range(blocks) for p in range(width - max(1, width // 2), width)]
            root = modules[name]
            dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs=drop).prune()
        forward_with_hooks(pruned, input_shape, lambda *_: None)
    except Exception:  # noqa: BLE001  (any failure means: this cut breaks the model)
        return False
    return True


def without_breaking_units(model: nn.Module, input_shape: tuple[int, ...], found: list,
                            widths: dict[str, int]) -> list:
    """Drop the units whose pruning breaks the model's forward: a ``reshape`` to sizes computed from
    another tensor (timm-style attention splits ``qkv`` with the embedding width and a fixed head
    count) ties channels together in a way the dependency graph does not trace. The dropped units
    keep all their channels; a warning names them. One trial forward when nothing breaks; else one
    per unit (those failing alone go), and, if the rest still fail together, one per unit again,
    adding them back in order while the cut still runs."""
    spec = {f[1][0]: (f[1][0], widths[f[1][0]], f[3]) for f in found}
    if _prunes_cleanly(model, input_shape, list(spec.values())):
        return found
    broken = {name for name, unit in spec.items() if not _prunes_cleanly(model, input_shape, [unit])}
    kept = [f for f in found if f[1][0] not in broken]
    if not _prunes_cleanly(model, input_shape, [spec[f[1][0]] for f in kept]):
        together: list = []
        for f in kept:
            if _prunes_cleanly(model, input_shape, [spec[g[1][0]] for g in [*together, f]]):
                together.append(f)
            else:
                broken.add(f[1][0])
        kept = together
    log.warning("left out %d unit(s) whose pruning breaks the model's forward pass (a reshape the dependency "
                "graph does not see, e.g. timm-style attention): %s; their channels are kept",
                len(broken), ", ".join(sorted(broken)))
    return kept
