"""Tracing a model: its conv/linear layers in forward order, attention's token counts,
torch-pruning's dependency graph, and the trial cuts that find units whose pruning breaks the
forward pass (what :func:`autoprune.core.graph.build_unit_graph` is built from)."""

from __future__ import annotations

import copy
import logging
import re
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


def _trial_cut(channels: int, blocks: int) -> list[int]:
    """The channels a trial cut removes: the upper half of every block (the same positions in each)."""
    width = channels // blocks
    return [b * width + p for b in range(blocks) for p in range(width - max(1, width // 2), width)]


def _prunes_cleanly(model: nn.Module, input_shape: tuple[int, ...], units: Sequence[tuple[str, int, int]]) -> bool:
    """Whether a copy of ``model`` with each ``(unit, channels, blocks)`` cut to about half (the same
    positions of every block) still runs a forward pass."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    try:
        dg = build_dependency_graph(pruned, input_shape)
        for name, channels, blocks in units:
            root = modules[name]
            dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels,
                                 idxs=_trial_cut(channels, blocks)).prune()
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


def _channel_axis(module: nn.Module, tensor: torch.Tensor) -> int:
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else tensor.dim() - 1


def _cuts_channels_it_removes(model: nn.Module, input_shape: tuple[int, ...], group) -> bool | None:
    """Whether the consumers in a torch-pruning ``group`` lose the input channels that carry the
    channels its producers lose. The producers' cut outputs are set to NaN in one batch-1 forward
    (every other conv/linear output cleared of NaN); NaN survives every per-channel op (BatchNorm,
    activations, pooling, residual adds, concats, reshapes) and lands on the consumer inputs those
    channels really reach; every input channel the group removes must be among them. (Ops that mix
    channels, GroupNorm within its groups, LayerNorm across all, spread NaN wider: a superset passes.)
    ``None`` where the forward cannot tell (it raises, or no consumer input is NaN in some but not
    all channels)."""
    producers: dict[nn.Module, list[int]] = {}
    consumers: dict[nn.Module, set[int]] = {}
    for item in group:
        mod = item.dep.target.module
        if isinstance(mod, PRUNABLE_TYPES):
            out = "out" in getattr(item.dep.handler, "__name__", "")
            if out:
                producers.setdefault(mod, []).extend(int(i) for i in item.idxs)
            depthwise = isinstance(mod, nn.modules.conv._ConvNd) and 1 < mod.groups == mod.in_channels
            if not out or depthwise:  # a depthwise conv's cut removes its inputs too
                consumers.setdefault(mod, set()).update(int(i) for i in item.idxs)
    if not producers or not consumers:
        return None
    reached: dict[nn.Module, torch.Tensor] = {}

    def inject(mod, _inp, out):  # every conv/linear mixes its inputs: NaN passed through one says nothing
        out = out.masked_fill(torch.isnan(out), 0.0)
        if mod in producers:
            index = [slice(None)] * out.dim()
            index[_channel_axis(mod, out)] = sorted(set(producers[mod]))
            out[tuple(index)] = float("nan")
        return out

    def record(mod, inp):
        x = inp[0]
        nan = torch.isnan(x).movedim(_channel_axis(mod, x), -1).reshape(-1, x.shape[_channel_axis(mod, x)]).any(0)
        reached[mod] = nan if mod not in reached else reached[mod] | nan

    handles = [m.register_forward_hook(inject) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    handles += [m.register_forward_pre_hook(record) for m in consumers]
    try:
        _run_hooked(model, input_shape, handles)
    except Exception:  # noqa: BLE001  (a model that refuses NaN cannot be checked this way)
        return None
    verdicts = []
    for mod, removed in consumers.items():
        nan = reached.get(mod)
        if nan is not None and nan.any() and not nan.all():
            verdicts.append(removed <= {int(i) for i in nan.nonzero().flatten()})
    return all(verdicts) if verdicts else None


# Autograd ops a channel passes through in place (pointwise, per-channel, spatial, a Linear's own
# addmm): groups made of these alone need no check. Anything else (view/reshape, index, roll, flip,
# transpose, attention, ops not listed) gets one.
_IN_PLACE_OPS = re.compile(
    r"(Relu|Relu6|Hardtanh|Sigmoid|Tanh|Gelu|Silu|Hardswish|Hardsigmoid|LeakyRelu|Elu|Selu|Celu|Prelu|Softplus|Mish"
    r"|Add|Sub|Rsub|Mul|Div|Neg|Clamp|ClampMin|ClampMax|Pow|Exp|Log|Sqrt|Rsqrt|Abs|Where|Maximum|Minimum"
    r"|Threshold|Clone|ToCopy|Mean|Sum|Squeeze|Unsqueeze|Addmm|Mm|T|NativeBatchNorm|CudnnBatchNorm|NativeDropout"
    r"|(Adaptive)?(Max|Avg)Pool[123]D(WithIndices)?|Upsample\w+|ConstantPadNd|(Reflection|Replication)Pad[123]D)"
    r"Backward\d*")


def _passes_channels_in_place(group) -> bool:
    for item in group:
        node = item.dep.target
        kind = type(node.module).__name__
        if kind == "_ElementWiseOp" and not _IN_PLACE_OPS.fullmatch(type(getattr(node, "grad_fn", None)).__name__):
            return False
        if kind.startswith("_") and kind not in ("_ElementWiseOp", "_ConcatOp", "_SplitOp", "_OutputOp"):
            return False
    return True


def without_misrouted_units(model: nn.Module, input_shape: tuple[int, ...], dg: tp.DependencyGraph, found: list,
                            widths: dict[str, int]) -> list:
    """Drop the units whose pruning would remove other input channels from their consumers than the
    ones their producers lose (:func:`_cuts_channels_it_removes`): a permutation of channels the
    dependency graph passes through as if it kept them in place, such as ShuffleNet's channel
    shuffle (``view`` into groups, ``transpose``, ``reshape`` back). Pruning such a unit still runs,
    but the next layer reads other channels than it was trained on. The dropped units keep all
    their channels; a warning names them. Groups whose channels pass only through pointwise,
    per-channel and spatial ops (most CNNs) are not run; the others cost one forward each."""
    modules = dict(model.named_modules())
    misrouted = set()
    for f in found:
        name = f[1][0]
        root = modules[name]
        group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels,
                                     idxs=_trial_cut(widths[name], f[3]))
        if not _passes_channels_in_place(group) and _cuts_channels_it_removes(model, input_shape, group) is False:
            misrouted.add(name)
    if not misrouted:
        return found
    log.warning("left out %d unit(s) whose channels are permuted on the way to the next layer in a way the "
                "dependency graph does not follow (e.g. a channel shuffle): %s; their channels are kept",
                len(misrouted), ", ".join(sorted(misrouted)))
    return [f for f in found if f[1][0] not in misrouted]
