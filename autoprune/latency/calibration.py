"""Calibration of a LUT: the form that maps its table sums (and MACs/elements terms) to measured
whole-model latencies, chosen by leave-one-out over the calibration plans (:func:`fit_calibration`;
:func:`autoprune.latency.build.calibrate` times the plans)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import lsq_linear

from autoprune.latency.lut import Lut

log = logging.getLogger(__name__)

LOO_WARN_PCT = 5.0
"""A calibration whose leave-one-out error exceeds this (percent) is timed again (``lut build``, up to
:data:`~autoprune.latency.build.CALIBRATION_RETRIES` times, the best kept) and, if it still does, warned about
after ``lut build``/``import``."""


def fit_calibration(lut: Lut, counts: Sequence[Sequence[int]], raw: Sequence[float], melements: Sequence[float],
                    relative: Sequence[float], base_reference: float,
                    misaligned: Mapping[int, Sequence[float]] | None = None,
                    padded: Mapping[int, Sequence[float]] | None = None,
                    padded_elements: Mapping[int, Sequence[float]] | None = None,
                    padded_out: Mapping[int, Sequence[float]] | None = None, measured_anchor: bool = True,
                    per_layer_anchor: bool = True) -> None:
    """Fit ``value = scale * raw + per_melement * melements [+ per_misaligned * misaligned |
    + per_padded_mmac * padded] + offset`` to measured latencies (reference units).

    Candidate forms: with no third term, with the ``misaligned`` term (output elements of convs
    whose width is not a multiple of ``align``) or with the ``padded`` term (MACs with every width
    rounded up to a multiple of ``pad``), for each alignment given; and with every coefficient >= 0
    or with ``per_melement`` and ``offset`` free in sign (a layer timed alone can cost *more* than
    inside the model: ONNX Runtime reorders a lone conv's input and output to its blocked layout).
    With the padded term the tables' ``scale`` may fit to 0: OpenVINO's CPU plugin times lone
    layers at 2.3x their share of the model, and its latency follows the padded MACs instead
    (``benchmarks/results/lut_accuracy.md``); the padded forms are tried with ``melements`` and
    with ``padded_elements`` (the output elements with channels rounded up alike: activations
    stored in channel blocks) as the elements term, and with ``padded_out`` (MACs with only the output
    widths rounded up: OpenVINO's ``brgconv`` kernels on channels-last activations, which this machine's
    AVX-512/AMX CPU runs, block the output channels only; calibration key ``pad_inputs: false``)
    instead of ``padded``. The form kept predicts left-out calibration plans best
    (leave-one-out, mean abs % error of the fraction; each extra term must earn a quarter of a
    percentage point). Each form with a third term is also tried fitted to the pruned plans alone,
    their fractions then taken of the unpruned model's *measured* latency (``anchor: measured``; an
    extra quarter point): on OpenVINO the unpruned model, every width a multiple of 16, runs 15-20%
    faster than the trend of its pruned variants (``docs/latency.md``), and a fit forced through it
    is bent for every plan (``measured_anchor=False``: not offered). The per-layer alternative
    (``per_layer_anchor``, fitted through the unpruned model like the plain forms, a quarter point
    extra too): each padded form with the ``misaligned`` term at its alignment added, so the gap between
    an aligned model and the pruned trend is paid per misaligned conv (a plan that cuts one unit pays
    for that unit's convs only, where the measured anchor prices every pruned plan on the pruned
    trend; ``docs/latency.md``). Its coefficients are all >= 0: the misaligned elements of a random
    plan are nearly all its elements, and with the elements term free in sign the two cancelled
    (-45 and +30 per million in an OpenVINO ResNet-56 build), and two builds with that freedom fitted
    their calibration plans to 1-2% and missed their check plans by 27-33% (``docs/latency.md``).

    :param counts: the plans, the unpruned model first (stored in the header for later baselines).
    :param raw: each plan's table sum; ``melements``: its kept output elements (millions).
    :param relative: each plan's measured latency as a fraction of the unpruned model's (1.0 first).
    :param base_reference: the unpruned model's latency in reference-op units.
    :param misaligned: for each candidate ``align``, each plan's misaligned output elements (millions).
    """
    h = lut.header
    raw, relative = np.asarray(raw, float), np.asarray(relative, float)
    measured = relative * base_reference
    h.update(base_reference=float(base_reference), remainder=float(base_reference - raw[0]))
    h.pop("calibration", None)
    if len(raw) < 2 or np.ptp(raw) <= 0:
        return
    mel = np.asarray(melements, float)
    columns: dict[tuple[str, int] | None, list[np.ndarray]] = {None: [raw, mel]}
    columns |= {("misaligned", a): [raw, mel, np.asarray(m, float)] for a, m in (misaligned or {}).items()}
    columns |= {("padded", a): [raw, mel, np.asarray(p, float)] for a, p in (padded or {}).items()}
    columns |= {("padded_elements", a): [raw, np.asarray(padded_elements[a], float), np.asarray(p, float)]
                for a, p in (padded or {}).items() if a in (padded_elements or {})}
    columns |= {("padded_out", a): [raw, mel, np.asarray(p, float)] for a, p in (padded_out or {}).items()}
    columns |= {("padded_out_elements", a): [raw, np.asarray(padded_elements[a], float), np.asarray(p, float)]
                for a, p in (padded_out or {}).items() if a in (padded_elements or {})}
    if per_layer_anchor:  # the padded forms plus the misaligned term at the same alignment, through the full model
        columns |= {(f"{k[0]}+misaligned", k[1]): [*cols, np.asarray(misaligned[k[1]], float)]
                    for k, cols in list(columns.items()) if k and k[0].startswith("padded") and k[1] in (misaligned or {})}
    forms = {(term, free, off): np.column_stack([*cols, np.ones_like(raw)])
             for term, cols in columns.items() for free in (0, 1) for off in (0, measured_anchor)
             if not off or (term is not None and not term[0].endswith("+misaligned"))
             if not (free and term is not None and term[0].endswith("+misaligned"))}
    loo = {form: _leave_one_out(x, measured, relative, bool(form[1]), _padded(form), bool(form[2]))
           + 0.25 * ((form[0] is not None) + form[1] + form[2] + _two_terms(form)) for form, x in forms.items()}
    enough = np.isfinite(min(loo.values()))  # too few plans to choose by leave-one-out: a line on the sum
    best = min(loo, key=loo.__getitem__) if enough else (None, 0, 0)
    term, free, off = best
    x = forms[best]
    rows = slice(1, None) if off else slice(None)
    coef = _fit(x[rows], measured[rows], bool(free), _padded(best)) if enough else _line(x, measured)
    if coef is None and raw[0] <= base_reference:
        log.warning("LUT calibration fit failed; using sum + remainder")
        return
    if coef is None:  # the tables sum to more than the model (lone layers timed slower): scale them to it
        log.warning("LUT calibration fit failed; the tables sum to more than the model, scaled down to it")
        coef = np.zeros(x.shape[1])
        coef[0] = base_reference / raw[0]
    fit = x @ coef
    cal: dict[str, Any] = {"scale": float(coef[0]), "per_melement": float(coef[1])}
    if off:
        cal["anchor"] = "measured"
    denominator = measured[0] if off else fit[0]
    if term is not None and term[0] == "misaligned":
        cal.update(align=int(term[1]), per_misaligned=float(coef[2]))
    elif term is not None:
        if term[0].endswith("+misaligned"):
            cal.update(align=int(term[1]), per_misaligned=float(coef[3]))
        cal.update(pad=int(term[1]), per_padded_mmac=float(coef[2]))
        if term[0].endswith("_elements"):
            cal["padded_elements"] = True
        if term[0].startswith("padded_out"):
            cal["pad_inputs"] = False
    cal.update(offset=float(coef[-1]), plans=len(raw),
               fit_mape=float(np.mean(np.abs(fit[rows] / denominator - relative[rows]) / relative[rows]) * 100),
               loo_mape=float(loo[best]) if np.isfinite(loo[best]) else None, counts=[list(map(int, c)) for c in counts],
               relative=relative.tolist())
    h["calibration"] = cal


def smallest_calibrated(header: Mapping[str, Any], widths: Any, units: int) -> tuple[float, float] | None:
    """The MACs and measured value (the LUT's unit) of the header's calibration plan with the fewest MACs
    (``widths``: a :class:`~autoprune.core.cost.WidthModel` of the model's ``units`` units), or None (no plans
    stored, or plans of another model). Below it a fitted line is extrapolated, and with a negative offset (a
    layer timed alone runs slower than in the model) it falls to 0 and below: :class:`~autoprune.latency.lut.
    LutCost` prices no plan under this plan's value scaled by MACs, the bound any fixed overhead >= 0 implies."""
    cal = header.get("calibration") or {}
    counts, relative = cal.get("counts") or [], cal.get("relative") or []
    if not counts or len(counts) != len(relative) or not header.get("base_reference") or any(len(c) != units
                                                                                             for c in counts):
        return None
    macs = [widths.flops(c) for c in counts]
    k = min(range(len(macs)), key=macs.__getitem__)
    value = float(relative[k]) * float(header["base_reference"])
    return (macs[k], value) if macs[k] > 0 and value > 0 else None


def _padded(form: tuple) -> bool:
    return form[0] is not None and form[0][0].startswith("padded")


def _two_terms(form: tuple) -> bool:
    """A padded form with the misaligned term too (it pays a second quarter point)."""
    return form[0] is not None and form[0][0].endswith("+misaligned")


def _fit(x: np.ndarray, y: np.ndarray, free: bool = False, padded: bool = False) -> np.ndarray | None:
    """Least squares with ``scale`` (column 0) and the third term >= 0, and the elements term
    (column 1) and the offset (last) >= 0 too unless ``free``. If the fit gives the tables no
    weight: a straight line on the sum, unless the padded MACs (column 2 with ``padded``) carry it."""
    low = np.zeros(x.shape[1])
    if free:
        low[1] = low[-1] = -np.inf
    coef = lsq_linear(x, y, bounds=(low, np.full(x.shape[1], np.inf))).x
    if padded and coef[0] * x[0, 0] < 0.01 * y[0] and coef[2] > 0:
        coef[0] = 0.0
    elif coef[0] * x[0, 0] < 0.01 * y[0]:  # the tables carry < 1% of the base: fit a plain line on the sum
        return _line(x, y)
    ok = coef[0] > 0 or (padded and coef[2] > 0)
    return coef if np.isfinite(coef).all() and ok else None


def _line(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """``y ~ scale * sum + offset`` (the other terms 0); None unless ``scale > 0``. Row 0 is the base."""
    scale, offset = np.polyfit(x[:, 0], y, 1)
    coef = np.zeros(x.shape[1])
    coef[0], coef[-1] = scale, offset
    return coef if np.isfinite(coef).all() and scale > 0 else None


def _leave_one_out(x: np.ndarray, y: np.ndarray, relative: np.ndarray, free: bool, padded: bool = False,
                   off: bool = False) -> float:
    """Mean abs % error of each pruned plan's predicted fraction, fitted without that plan. With
    ``off`` the unpruned model (row 0) is left out of every fit and the fraction is taken of its
    measured latency instead of the fit's value there (``anchor: measured``)."""
    if len(y) - off < x.shape[1] + 2:
        return float("inf")
    errors = []
    for k in range(1, len(y)):
        keep = (np.arange(len(y)) != k) & ((np.arange(len(y)) > 0) if off else True)
        coef = _fit(x[keep], y[keep], free, padded)
        if coef is None:
            return float("inf")
        errors.append(abs((x[k] @ coef) / (y[0] if off else x[0] @ coef) - relative[k]) / relative[k])
    return float(np.mean(errors) * 100)
