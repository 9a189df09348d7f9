"""Prunable units of a model, discovered through torch-pruning's dependency graph.

A *unit* is one group of coupled channels: a plain conv with its BatchNorm and the next layer's
inputs; all convs joined by a residual add; an expand conv with its depthwise conv; the producers
of a concat; a ViT's embedding. Pruning ``k`` channels of a unit removes the same ``k`` channels
everywhere in the group; where they form equal blocks (heads, groups), the same positions of every
block. The classifier's outputs, and units whose cut breaks the forward pass, are never pruned.

For each unit we record, per module it touches, how many input/output elements one channel
maps to (1 for a conv, H*W for a Linear after a flatten). That makes the cost of any plan a
closed-form function of the kept channel counts (see :mod:`autoprune.core.cost`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from autoprune.core.tracing import (
    PRUNABLE_TYPES,
    attention_tokens,
    build_dependency_graph,
    execution_order,
    in_projections,
    without_breaking_units,
    without_misrouted_units,
)
from autoprune.errors import AutopruneError


@dataclass(frozen=True)
class LayerSpec:
    """What an AMC state needs to know about one prunable unit (of the unpruned model)."""

    index: int
    name: str
    kind: str  # "conv", "depthwise" (expand conv coupled with a depthwise conv) or "linear"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_h: int
    in_w: int
    flops: int  # MACs of the layers whose outputs this unit prunes
    params: int
    members: tuple[str, ...] = ()  # every conv/linear whose output channels belong to this unit
    # kept counts must be a multiple of this: the unit's channels are split into this many equal
    # blocks (attention heads, GroupNorm groups, a grouped conv's groups) and every block keeps the
    # same positions, so heads and groups stay whole. 1 for most units.
    blocks: int = 1

    def step(self, round_to: int = 1) -> int:
        """The multiple kept counts are rounded to: ``round_to`` and :attr:`blocks` both divide it."""
        return math.lcm(max(1, int(round_to)), self.blocks)


@dataclass
class ModuleInfo:
    """Static shape facts about one module that holds parameters or does MACs."""

    name: str
    kind: str  # "conv", "depthwise", "linear", "attention", "norm" or "other"
    in_ch: int
    out_ch: int
    macs: int  # at full width
    weight_params: int  # params scaling with in x out (conv/linear weight)
    out_params: int  # params scaling with out only (bias, norm affine, depthwise weight)
    fixed_params: int = 0  # params no unit changes
    out_spatial: int = 0  # output elements per output channel (H x W of a conv), 0 if not run
    groups: int = 1  # a grouped (not depthwise) conv's groups: both widths stay multiples of it


@dataclass
class UnitGraph:
    """The prunable units of one model at one input shape."""

    model: nn.Module
    input_shape: tuple[int, ...]
    units: list[LayerSpec]
    modules: list[ModuleInfo]
    # unit index -> list of (module index, "in"|"out", elements per channel)
    couplings: list[list[tuple[int, str, int]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # units kept whole by ``pruning.skip`` (their discovery-order index) and its patterns
    skipped: list[LayerSpec] = field(default_factory=list)
    skip: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    @property
    def channels(self) -> list[int]:
        return [u.out_channels for u in self.units]

    def __len__(self) -> int:
        return len(self.units)

    def unit(self, name: str) -> LayerSpec:
        for u in self.units:
            if u.name == name:
                return u
        if any(u.name == name for u in self.skipped):
            raise AutopruneError(f"unit {name!r} is kept whole by pruning.skip {list(self.skip)}")
        raise AutopruneError(f"unknown prunable unit {name!r}; units: {', '.join(self.names)}")

    def discovered(self) -> list[tuple[str, int]]:
        """``(name, channels)`` of every unit the model has, skipped ones included, in discovery order."""
        skipped = {u.index: u for u in self.skipped}
        kept = iter(self.units)
        return [(u.name, u.out_channels) for u in
                (skipped[i] if i in skipped else next(kept) for i in range(len(self.units) + len(skipped)))]


def _attention_info(name: str, mha: nn.MultiheadAttention, tokens: int) -> ModuleInfo:
    """The q/k/v input projection of an attention layer as a dense layer: embed_dim inputs, three
    outputs per embedding channel (the out projection is its own Linear). Attention's own products
    (QK^T, AV) are not conv/linear MACs and are not counted, as everywhere in autoprune."""
    weight = sum(w.numel() for w in in_projections(mha))
    bias = mha.in_proj_bias.numel() if mha.in_proj_bias is not None else 0
    e = mha.embed_dim
    return ModuleInfo(name, "attention", e, 3 * e, tokens * weight, weight, bias,
                      fixed_params=sum(p.numel() for p in (mha.bias_k, mha.bias_v) if p is not None),
                      out_spatial=tokens)


def _module_info(name: str, module: nn.Module, in_shape: tuple | None, out_shape: tuple | None) -> ModuleInfo:
    direct = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, nn.modules.conv._ConvNd):
        k = 1
        for s in module.kernel_size:
            k *= s
        spatial = 1
        for s in (out_shape or (1, 1))[2:]:
            spatial *= s
        bias = module.out_channels if module.bias is not None else 0
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            w = module.weight.numel()
            return ModuleInfo(name, "depthwise", module.in_channels, module.out_channels,
                              spatial * w, 0, w + bias, out_spatial=spatial if out_shape else 0)
        macs = spatial * module.weight.numel()
        return ModuleInfo(name, "conv", module.in_channels, module.out_channels, macs,
                          module.weight.numel(), bias, out_spatial=spatial if out_shape else 0,
                          groups=channel_blocks(module))
    if isinstance(module, nn.Linear):
        lead = 1
        for s in (out_shape or (1, 1))[1:-1]:
            lead *= s
        bias = module.out_features if module.bias is not None else 0
        return ModuleInfo(name, "linear", module.in_features, module.out_features,
                          lead * module.weight.numel(), module.weight.numel(), bias,
                          out_spatial=lead if out_shape else 0)
    channels = getattr(module, "num_features", None) or getattr(module, "num_channels", None)
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        channels = module.normalized_shape[0]
    if channels:
        return ModuleInfo(name, "norm", channels, channels, 0, 0, direct)
    return ModuleInfo(name, "other", 0, 0, 0, 0, 0, fixed_params=direct)


def channel_blocks(module: nn.Module) -> int:
    """Into how many equal blocks ``module`` splits the channels it shares with a unit: the heads
    of an attention layer's embedding, a GroupNorm's groups, a grouped (not depthwise) conv's
    groups. Pruning must take the same number from each block (torch-pruning keeps ``num_heads``,
    ``num_groups`` and ``groups`` as they are and slices grouped inputs block by block)."""
    if isinstance(module, nn.MultiheadAttention | nn.GroupNorm):
        return int(getattr(module, "num_heads", None) or module.num_groups)
    if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups != module.out_channels:
        return int(module.groups)
    return 1


def _loose_parameter(modules: list[ModuleInfo], module_index: dict[str, int], name: str,
                     param: nn.Parameter, root: nn.Module) -> int:
    """Index of a ModuleInfo for a parameter that torch-pruning cuts along with a unit (a class
    token, position embeddings): its elements move from its owner's fixed params to this entry."""
    if name not in module_index:
        width = getattr(root, "out_channels", None) or getattr(root, "out_features", None) or param.shape[-1]
        module_index[name] = len(modules)
        modules.append(ModuleInfo(name, "norm", width, width, 0, 0, param.numel()))
        owner = modules[module_index[name.rpartition(".")[0]]]
        owner.fixed_params -= param.numel()
    return module_index[name]


def build_unit_graph(
    model: nn.Module,
    input_shape: Sequence[int],
    ignored_layers: Sequence[str] = (),
) -> UnitGraph:
    """Discover the prunable units of ``model`` (not modified) for inputs of ``input_shape``."""
    input_shape = tuple(int(s) for s in input_shape)
    order = execution_order(model, input_shape)
    if not order:
        raise AutopruneError("the model has no Conv or Linear layer, so nothing can be pruned")
    exec_index = {name: i for i, (name, *_rest) in enumerate(order)}
    shapes = {name: (ins, outs) for name, _m, ins, outs in order}
    name_of = {m: n for n, m in model.named_modules()}
    classifier = order[-1][1]
    ignored = [classifier] + [dict(model.named_modules())[n] for n in ignored_layers]

    dg = build_dependency_graph(model, input_shape)
    groups = dg.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_TYPES)

    modules: list[ModuleInfo] = []
    module_index: dict[str, int] = {}
    tokens = attention_tokens(model, input_shape)
    for name, module in model.named_modules():
        has_params = any(True for _ in module.parameters(recurse=False))
        if has_params or isinstance(module, PRUNABLE_TYPES):
            ins, outs = shapes.get(name, (None, None))
            module_index[name] = len(modules)
            if isinstance(module, nn.MultiheadAttention):
                modules.append(_attention_info(name, module, tokens.get(name, 0)))
            else:
                modules.append(_module_info(name, module, ins, outs))
    for name, module in model.named_modules():  # out projections run inside attention, unhooked
        if isinstance(module, nn.MultiheadAttention) and f"{name}.out_proj" in module_index:
            out = modules[module_index[f"{name}.out_proj"]]
            n = tokens.get(name, 0)
            out.kind, out.macs, out.out_spatial = "attention", n * module.out_proj.weight.numel(), n
    param_names = {id(p): n for n, p in model.named_parameters()}

    found = []
    for group in groups:
        root_dep = group[0].dep
        root, handler = root_dep.target.module, root_dep.handler
        probe = dg.get_pruning_group(root, handler, idxs=[0])
        coupling: dict[tuple[int, str], int] = {}
        members = []
        blocks = 1
        for item in probe:
            mod = item.dep.target.module
            blocks = math.lcm(blocks, channel_blocks(mod))
            if isinstance(mod, nn.MultiheadAttention):  # embed channels: in and 3x out of in_proj, out_proj
                mname = name_of[mod]
                coupling[(module_index[mname], "in")] = 1
                coupling[(module_index[mname], "out")] = 3
                if f"{mname}.out_proj" in module_index:
                    coupling[(module_index[f"{mname}.out_proj"], "in")] = 1
                    coupling[(module_index[f"{mname}.out_proj"], "out")] = 1
                continue
            if isinstance(mod, nn.Parameter) and id(mod) in param_names:  # a loose parameter (cls token)
                coupling[(_loose_parameter(modules, module_index, param_names[id(mod)], mod, root), "out")] = 1
                continue
            mname = name_of.get(mod)
            if mname is None or mname not in module_index:
                continue
            fn = getattr(item.dep.handler, "__name__", "")
            dim = "out" if "out" in fn else "in"
            coupling[(module_index[mname], dim)] = len(item.idxs)
            if dim == "out" and isinstance(mod, PRUNABLE_TYPES) and mname in exec_index:
                members.append(mname)
        if not members:
            continue
        members.sort(key=exec_index.__getitem__)
        if blocks > 1 and blocks >= modules[module_index[members[0]]].out_ch:
            continue  # one channel per head/group: nothing can go without breaking the structure
        found.append((exec_index[members[0]], members, coupling, blocks))
    widths = {f[1][0]: modules[module_index[f[1][0]]].out_ch for f in found}
    found = without_breaking_units(model, input_shape, found, widths)
    found = without_misrouted_units(model, input_shape, dg, found, widths)
    if not found:
        raise AutopruneError(
            "the model has no prunable unit (its only conv/linear layer is the classifier)"
        )
    found.sort(key=lambda f: f[0])

    units, couplings = [], []
    for index, (_pos, members, coupling, blocks) in enumerate(found):
        rep_name = members[0]
        rep = dict(model.named_modules())[rep_name]
        ins, _outs = shapes[rep_name]
        info = modules[module_index[rep_name]]
        kind = "linear" if isinstance(rep, nn.Linear) else "conv"
        if any(modules[m].kind == "depthwise" for (m, d) in coupling if d == "out"):
            kind = "depthwise"
        flops = sum(modules[m].macs for (m, d) in coupling if d == "out")
        params = sum(modules[m].weight_params + modules[m].out_params for (m, d) in coupling if d == "out")
        conv = rep if isinstance(rep, nn.modules.conv._ConvNd) else None
        units.append(LayerSpec(
            index=index, name=rep_name, kind=kind, in_channels=info.in_ch, out_channels=info.out_ch,
            kernel=int(conv.kernel_size[0]) if conv else 1, stride=int(conv.stride[0]) if conv else 1,
            groups=int(conv.groups) if conv else 1,
            in_h=int(ins[2]) if len(ins) > 2 else 1, in_w=int(ins[3]) if len(ins) > 3 else 1,
            flops=int(flops), params=int(params), members=tuple(members), blocks=blocks,
        ))
        couplings.append([(m, d, mult) for (m, d), mult in sorted(coupling.items())])
    return UnitGraph(model=model, input_shape=input_shape, units=units, modules=modules,
                     couplings=couplings, ignored=[name_of[m] for m in ignored])
