"""Latency lookup-table files (``autoprune lut build|check|probes|import|list``): build a LUT for a named
model and write it; check one against fresh timings (scatter plot, JSON summary, and the result
recorded in the LUT's header); write probe models for a device without Python autoprune and import
their timings; list a LUT directory.

Timing runs in this process (see :mod:`autoprune.latency.build` and :mod:`autoprune.latency.timing`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoprune.atomic import atomic_write_json, atomic_write_text, atomic_write_with, check_writable
from autoprune.errors import AutopruneError
from autoprune.latency.build import build_lut
from autoprune.latency.calibration import LOO_WARN_PCT
from autoprune.latency.check import check_lut, reanchor_lut
from autoprune.latency.lut import Lut, load_lut
from autoprune.latency.lutdir import LutEntry, list_luts, lut_dir, record_check
from autoprune.latency.probes import import_probes, write_probes
from autoprune.models.zoo import model_from_name

log = logging.getLogger(__name__)


PASS_SHIFT_WARN = 0.05
"""A timing whose passes moved every plan's fraction together by more than this gets a warning
(:attr:`autoprune.latency.timing.TimedPlans.pass_shift`)."""


def calibration_warning(header: dict) -> str | None:
    """A one-line warning (its parts joined) when the LUT's calibration may misprice plans: its timing
    passes moved together (the machine's load changed), it was fitted without the unpruned model, or
    it predicts left-out plans poorly (its model form does not fit this runtime: e.g. OpenVINO, where
    lone layers cost far more than inside the compiled graph)."""
    cal = header.get("calibration") or {}
    loo, parts = cal.get("loo_mape"), []
    if cal.get("pass_shift", 0.0) > PASS_SHIFT_WARN:
        parts.append(f"the calibration's timing passes moved every plan's fraction together by up to "
                     f"{cal['pass_shift']:.0%} (the machine's load changed while it timed): this LUT may be off by "
                     "as much; build it again on a quieter machine")
    if cal.get("anchor") == "measured":
        parts.append("the calibration was fitted without the unpruned model (it is off its pruned variants' "
                     "trend): plans close to it, e.g. one unit cut a little, may be priced on that trend, above 1.0; "
                     "a greedy search from the unpruned model (netadapt) would see its first steps priced too high "
                     "(a latency budget without lut measures them instead)")
    if loo is not None and loo > LOO_WARN_PCT:
        parts.append(f"the calibration predicts left-out plans with {loo:.1f}% mean error (> {LOO_WARN_PCT:g}%): "
                     f"expect this LUT to be off by as much; check it (autoprune lut check) or budget with measured "
                     f"latency in {header.get('runtime', 'this runtime')} (a latency budget without lut)")
    return "warning: " + "; also, ".join(parts) if parts else None


def calibration_summary(header: dict) -> str:
    """``"; calibration: <form>, fit X% mean error on N plans (leave-one-out Y%)"``, or ``""``."""
    cal = header.get("calibration")
    if not cal:
        return ""
    form = "tables" if cal.get("scale", 0) > 0 else "no tables"
    if cal.get("align"):
        form += f" + misaligned elements ({cal['align']})"
    if cal.get("pad"):
        form += f" + MACs padded to {cal['pad']}" + (" (outputs only)" if cal.get("pad_inputs") is False else "")
    form += " + elements" + (" (padded)" if cal.get("padded_elements") else "")
    if cal.get("anchor") == "measured":
        form += ", fitted without the unpruned model (fractions of its measured latency)"
    loo = f" (leave-one-out {cal['loo_mape']:.1f}%)" if cal.get("loo_mape") is not None else ""
    timed = f"; timed {cal['attempts']} times, the best kept" if cal.get("attempts", 1) > 1 else ""
    return f"; calibration: {form}, fit {cal['fit_mape']:.1f}% mean error on {cal['plans']} plans{loo}{timed}"


def build_lut_file(model: str, input_shape: tuple[int, ...], out: str | Path, model_kwargs: dict | None = None,
                   num_classes: int | None = None, **options: Any) -> Lut:
    """Profile the model named ``model`` (random weights: latency does not depend on them) and write its
    LUT to ``out``. ``options`` are :func:`~autoprune.latency.build.build_lut`'s (batch, threads, step,
    runtime, ...)."""
    out = Path(out)
    check_writable(out.parent if str(out.parent) else Path("."))
    net = model_from_name(model, model_kwargs, input_shape, num_classes)
    lut = build_lut(net, input_shape, model_name=model, **options)
    atomic_write_text(out, lut.to_json())
    return lut


def check_lut_file(lut_path: str | Path, model: str, model_kwargs: dict | None = None,
                   num_classes: int | None = None, plot: str | Path | None = None,
                   json_out: str | Path | None = None, record: bool = True, **options: Any) -> dict[str, Any]:
    """Time random pruned plans of ``model`` and compare with the LUT's predictions.

    Writes the scatter plot to ``plot`` (default: next to ``json_out``, else ``<lut>.check.png``),
    with ``json_out`` the result there, and with ``record`` a summary into the LUT file's header
    (``last_check``: what ``autoprune lut list`` shows). ``options`` are
    :func:`~autoprune.latency.check.check_lut`'s (plans, seed, repeats, progress, runtime, round_to,
    timings, reanchor). Returns the result with ``plot`` added.
    """
    lut = load_lut(lut_path)
    net = model_from_name(model, model_kwargs, tuple(lut.header["input_shape"]), num_classes)
    result = check_lut(lut, net, **options)
    if plot is None:
        plot = Path(json_out).with_suffix(".png") if json_out else Path(lut_path).with_suffix(".check.png")
    plot = Path(plot)
    scatter(result["predicted_rel"], result["measured_rel"], plot,
            f"{lut.header.get('device', '')}, {lut.header['runtime']}")
    summary = {**result, "plot": str(plot)}
    if json_out:
        atomic_write_json(json_out, summary)
    if record:
        try:
            record_check(lut_path, result)
        except (OSError, AutopruneError) as exc:
            log.warning("could not record the check in %s: %s", lut_path, exc)
    return summary


def reanchor_lut_file(lut_path: str | Path, model: str, model_kwargs: dict | None = None,
                      num_classes: int | None = None, **options: Any) -> dict[str, Any]:
    """Re-measure the LUT file's level on this machine now (:func:`~autoprune.latency.check.reanchor_lut`;
    ``options``: plans, seed, round_to, repeats, progress, near) and write it back in place, atomically. Its
    ``last_check`` is dropped: it scored the LUT at its old level."""
    lut = load_lut(lut_path)
    net = model_from_name(model, model_kwargs, tuple(lut.header["input_shape"]), num_classes)
    result = reanchor_lut(lut, net, **options)
    lut.header.pop("last_check", None)
    atomic_write_text(lut_path, lut.to_json())
    return result


def clear_level(lut_path: str | Path) -> float:
    """Remove the level ``lut reanchor`` stored in the LUT file (atomically); returns the level it had (1.0 if none)."""
    lut = load_lut(lut_path)
    previous = float((lut.header.pop("level", None) or {}).get("factor", 1.0))
    if previous != 1.0:  # the last check scored the LUT at that level
        lut.header.pop("last_check", None)
    atomic_write_text(lut_path, lut.to_json())
    return previous


def probes_dir(model: str, input_shape: tuple[int, ...], out: str | Path, model_kwargs: dict | None = None,
               num_classes: int | None = None, **options: Any) -> dict[str, Any]:
    """Write the probe models, manifest and timing script of a LUT build of ``model`` into ``out``
    (:func:`~autoprune.latency.probes.write_probes`; ``options``: batch, step, calibration_plans, seed)."""
    out = Path(out)
    check_writable(out.parent if str(out.parent) else Path("."))
    net = model_from_name(model, model_kwargs, input_shape, num_classes)
    return write_probes(net, input_shape, out, model_name=model, **options)


def import_lut_file(probe_dir: str | Path, out: str | Path, device: str | None = None) -> Lut:
    """Read a probe directory's ``timings.json`` into a LUT and write it to ``out``."""
    out = Path(out)
    check_writable(out.parent if str(out.parent) else Path("."))
    lut = import_probes(probe_dir, device)
    atomic_write_text(out, lut.to_json())
    return lut


def list_lut_dir(folder: str | Path | None = None) -> tuple[Path, list[LutEntry]]:
    """The LUTs in ``folder`` (default ``$AUTOPRUNE_LUT_DIR``)."""
    path = lut_dir(folder)
    if path is None:
        raise AutopruneError("no LUT directory: give --dir DIR or set AUTOPRUNE_LUT_DIR")
    return path, list_luts(path)


def scatter(predicted: list[float], measured: list[float], path: Path, title: str = "") -> None:
    """Predicted vs measured latency as a fraction of the unpruned model's, with the y = x line and a
    +-10% band (PNG, Agg backend)."""
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
    ax.set(xlabel="measured latency / unpruned", ylabel="LUT prediction / unpruned", xlim=(lo, hi), ylim=(lo, hi),
           title=f"LUT check{': ' + title if title else ''}"[:60])
    ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_write_with(path, lambda buf: fig.savefig(buf, format="png", dpi=110))
    plt.close(fig)
