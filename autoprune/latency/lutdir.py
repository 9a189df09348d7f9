"""A directory of LUTs, found by device name (``luts: DIR`` in a config, or ``$AUTOPRUNE_LUT_DIR``).

Every ``*.json`` file under the directory (subfolders included) whose header is a LUT header is an
entry; nothing else is needed (no index file). A budget such as
``budget: {latency_ms: 2.0, device: pixel7-ort}`` picks the one LUT whose header has that
``device``, the budget's ``runtime`` (when set) and the model's signature (LUTs without a
signature match any model and are checked structurally when loaded). ``autoprune lut list``
shows the entries; ``autoprune lut check`` records its result in the checked file's header
(``last_check``), which the list shows as the LUT's accuracy.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.atomic import atomic_write_text
from autoprune.errors import AutopruneError
from autoprune.latency.lut import SCHEMA_V1, Lut, upgrade_v1_header

ENV_VAR = "AUTOPRUNE_LUT_DIR"


def lut_dir(configured: str | Path | None = None) -> Path | None:
    """The LUT directory: ``configured`` (the config's ``luts``), else ``$AUTOPRUNE_LUT_DIR``, else None."""
    folder = configured or os.environ.get(ENV_VAR) or None
    if folder is None:
        return None
    path = Path(folder).expanduser()
    if not path.is_dir():
        where = "luts" if configured else ENV_VAR
        raise AutopruneError(f"LUT directory {str(path)!r} (from {where}) does not exist or is not a directory")
    return path


@dataclass
class LutEntry:
    """One LUT file in a directory: its path and header (v1 headers upgraded)."""

    path: Path
    header: dict[str, Any]

    def row(self) -> dict[str, Any]:
        """What ``autoprune lut list`` shows."""
        h = self.header
        check = h.get("last_check") or {}
        rounded = f" rounded to {check['round_to']}" if check.get("round_to", 1) > 1 else ""
        repeat = f", repeatability {check['repeatability']:.0%}" if "repeatability" in check else ""
        level = (h.get("level") or {}).get("factor")
        repeat += f", level x{level:.3f}" if level is not None else ""
        accuracy = (f"- (level x{level:.3f})" if level is not None else "-") if not check else (
            f"{check['within_10pct']:.0%} within +-10% ({check['plans']} plans{rounded}{repeat}, {check.get('date', '?')})")
        return {"file": str(self.path), "device": h.get("device"), "runtime": h.get("runtime"),
                "model": h.get("model") or "-", "signature": (h.get("model_signature") or "any")[:12],
                "batch": h.get("batch"), "threads": h.get("threads"),
                "created": str(h.get("created", "-"))[:10], "accuracy": accuracy}


def read_header(path: Path) -> dict[str, Any] | None:
    """The (upgraded) header of a LUT file, or None if the file is not a LUT."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    header = data.get("header") if isinstance(data, dict) else None
    if not isinstance(header, dict) or not isinstance(data.get("modules"), list):
        return None
    if header.get("schema") == SCHEMA_V1:
        header = upgrade_v1_header(header)
    return header if isinstance(header.get("device"), str) else None


def list_luts(folder: str | Path) -> list[LutEntry]:
    """Every LUT under ``folder``, sorted by device, runtime and path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AutopruneError(f"LUT directory {str(folder)!r} does not exist or is not a directory")
    entries = [LutEntry(p, h) for p in sorted(folder.rglob("*.json")) if (h := read_header(p)) is not None]
    return sorted(entries, key=lambda e: (e.header["device"], str(e.header.get("runtime")), str(e.path)))


def find_lut(folder: str | Path, device: str, runtime: str | None = None, signature: str | None = None) -> Path:
    """The one LUT under ``folder`` for ``device`` (and ``runtime``, and the model ``signature``).

    Raises a one-line error when none or several match, saying what is there.
    """
    entries = list_luts(folder)
    matches = [e for e in entries if e.header["device"] == device
               and (runtime is None or e.header.get("runtime") == runtime)
               and (signature is None or e.header.get("model_signature") in (None, signature))]
    wanted = f"device {device!r}" + (f", runtime {runtime!r}" if runtime else "") + " and this model"
    if not matches:
        devices = sorted({f"{e.header['device']} ({e.header.get('runtime')})" for e in entries})
        there = f"it has: {', '.join(devices)}" if devices else "it has no LUTs"
        raise AutopruneError(f"no LUT for {wanted} in {str(folder)!r} ({there}); build one with autoprune lut build "
                             f"--device-name {device!r} --out {str(Path(folder) / 'NAME.json')!r}")
    if len(matches) > 1:
        names = ", ".join(f"{e.path.name} ({e.header.get('runtime')}, batch {e.header.get('batch')})" for e in matches)
        raise AutopruneError(f"several LUTs match {wanted} in {str(folder)!r}: {names}; set budget.runtime or "
                             "budget.lut to choose one")
    return matches[0].path


def record_check(path: str | Path, result: dict[str, Any]) -> None:
    """Write a check's summary into the LUT file's header (``last_check``), leaving the rest as it was."""
    path = Path(path)
    data = json.loads(path.read_text())
    data["header"]["last_check"] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "plans": int(result["plans"]),
        "within_10pct": round(float(result["within_10pct"]), 4), "mape": round(float(result["mape"]), 3),
        "within_10pct_ms": round(float(result["within_10pct_ms"]), 4), "drift": round(float(result["drift"]), 4),
        "device": result.get("device_now"), "runtime": result.get("runtime"), "round_to": int(result.get("round_to", 1)),
        **({"repeatability": round(float(result["repeatability"]), 4)} if result.get("repeatability") is not None else {}),
        **({"reanchored": round(float(result["within_10pct_reanchored"]), 4)} if "within_10pct_reanchored" in result
           else {})}
    Lut.from_dict(data, f"LUT {str(path)!r}")  # still valid
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")
