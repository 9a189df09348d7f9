"""Latency: timing, the per-device lookup-table format, building and checking LUTs.

Importing this package registers the ``latency`` cost model (LUT-predicted or measured).
"""

from autoprune.latency import timing as _timing  # noqa: F401  (registers the "latency" cost model)
