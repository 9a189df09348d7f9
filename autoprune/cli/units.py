"""``autoprune units --model M --input-shape S``: the prunable units of a model, the names that
``pruning.skip`` and plans use, with their widths and shares of the FLOPs and params."""

from __future__ import annotations

import argparse

from autoprune.cli.lut import add_model_args, model_kwargs, parse_shape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("units", help="list a model's prunable units (names for pruning.skip and plans)")
    add_model_args(p)
    p.add_argument("--input-shape", required=True, help="one sample's shape: C,H,W (e.g. 3,32,32), C,L or F")
    p.add_argument("--skip", nargs="*", default=[], metavar="PATTERN",
                   help="pruning.skip patterns to try: the units they keep whole are marked 'skip'")
    p.add_argument("--round-to", type=int, default=1, help="pruning.round_to: shown in the step column")
    p.set_defaults(func=cmd_units)


def unit_rows(graph, round_to: int = 1) -> list[dict]:
    """One row per unit of ``graph`` (kept and skipped, discovery order)."""
    from autoprune.core.cost import FlopsCost, ParamsCost

    flops, params = FlopsCost(graph), ParamsCost(graph)
    rows, kept = [], {u.name for u in graph.units}
    order = {name: i for i, (name, _c) in enumerate(graph.discovered())}
    for u in sorted([*graph.units, *graph.skipped], key=lambda u: order[u.name]):
        row = {"unit": u.name, "kind": u.kind, "channels": u.out_channels, "step": u.step(round_to),
               "skip": u.name not in kept, "layers": list(u.members)}
        if row["skip"]:
            row["flops_share"] = row["params_share"] = None
        else:  # what cutting this unit alone to one step removes, as a share of the model
            counts = [min(v.step(round_to), v.out_channels) if v.name == u.name else v.out_channels
                      for v in graph.units]
            row["flops_share"] = 1 - flops(counts) / flops.base
            row["params_share"] = 1 - params(counts) / params.base
        rows.append(row)
    return rows


def cmd_units(args: argparse.Namespace) -> int:
    from autoprune.core.graph import build_unit_graph
    from autoprune.core.skip import skip_units
    from autoprune.errors import AutopruneError
    from autoprune.models.zoo import model_from_name

    if args.round_to < 1:
        raise AutopruneError(f"--round-to must be >= 1 (got {args.round_to})")
    shape = parse_shape(args.input_shape)
    model = model_from_name(args.model, model_kwargs(args), shape, args.num_classes)
    graph = skip_units(build_unit_graph(model, shape), args.skip)
    rows = unit_rows(graph, args.round_to)
    width = max(len(r["unit"]) for r in rows)
    print(f"{'unit':<{width}}  kind       channels  step  max FLOPs cut  params  layers")
    for r in rows:
        share = ("skip".rjust(13) + "  " + "".rjust(6) if r["skip"] else
                 f"{r['flops_share']:>13.1%}  {r['params_share']:>6.1%}")
        layers = ", ".join(r["layers"])
        print(f"{r['unit']:<{width}}  {r['kind']:<9}  {r['channels']:>8}  {r['step']:>4}  {share}  {layers}")
    print(f"{len(graph)} prunable unit(s)" + (f", {len(graph.skipped)} kept whole by --skip" if graph.skipped else "")
          + "; max cut: the share of the model's FLOPs/params removed by cutting that unit alone to one step"
          + (f"; left out (their cut breaks the forward pass or they are the classifier): {', '.join(graph.ignored)}"
             if graph.ignored else ""))
    return 0
