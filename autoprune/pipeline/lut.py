"""Latency lookup-table files (``autoprune lut build|check``): build a LUT for a named model and write
it; check one against fresh timings and write the scatter plot (and a JSON summary).

Timing runs in this process (see :mod:`autoprune.latency.build` and :mod:`autoprune.latency.timing`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprune.atomic import atomic_write_json, atomic_write_text, atomic_write_with, check_writable
from autoprune.latency.build import build_lut, check_lut
from autoprune.latency.lut import Lut, load_lut
from autoprune.models.zoo import model_from_name


def build_lut_file(model: str, input_shape: tuple[int, ...], out: str | Path, model_kwargs: dict | None = None,
                   num_classes: int | None = None, **options: Any) -> Lut:
    """Profile the model named ``model`` (random weights: latency does not depend on them) and write its
    LUT to ``out``. ``options`` are :func:`~autoprune.latency.build.build_lut`'s (batch, threads, step, ...)."""
    out = Path(out)
    check_writable(out.parent if str(out.parent) else Path("."))
    net = model_from_name(model, model_kwargs, input_shape, num_classes)
    lut = build_lut(net, input_shape, model_name=model, **options)
    atomic_write_text(out, lut.to_json())
    return lut


def check_lut_file(lut_path: str | Path, model: str, model_kwargs: dict | None = None,
                   num_classes: int | None = None, plot: str | Path | None = None,
                   json_out: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Time random pruned plans of ``model`` and compare with the LUT's predictions.

    Writes the scatter plot to ``plot`` (default: next to ``json_out``, else ``<lut>.check.png``) and,
    with ``json_out``, the result there. ``options`` are :func:`~autoprune.latency.build.check_lut`'s
    (plans, seed, repeats, progress). Returns the result with ``plot`` added.
    """
    lut = load_lut(lut_path)
    net = model_from_name(model, model_kwargs, tuple(lut.header["input_shape"]), num_classes)
    result = check_lut(lut, net, **options)
    if plot is None:
        plot = Path(json_out).with_suffix(".png") if json_out else Path(lut_path).with_suffix(".check.png")
    plot = Path(plot)
    scatter(result["predicted_ms"], result["measured_ms"], plot, lut.header.get("device", ""))
    summary = {**result, "plot": str(plot)}
    if json_out:
        atomic_write_json(json_out, summary)
    return summary


def scatter(predicted: list[float], measured: list[float], path: Path, device: str = "") -> None:
    """Predicted vs measured latency, with the y = x line and a +-10% band (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    lo, hi = min(predicted + measured) * 0.9, max(predicted + measured) * 1.1
    line = np.linspace(lo, hi, 2)
    ax.plot(line, line, "k-", lw=1, label="y = x")
    ax.fill_between(line, line * 0.9, line * 1.1, color="0.85", label="+-10%")
    ax.scatter(measured, predicted, s=14, zorder=3)
    ax.set(xlabel="measured latency (ms)", ylabel="LUT prediction (ms)", xlim=(lo, hi), ylim=(lo, hi),
           title=f"LUT check{': ' + device if device else ''}"[:60])
    ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_write_with(path, lambda buf: fig.savefig(buf, format="png", dpi=110))
    plt.close(fig)
