"""Latency: timing, the per-device lookup-table format, building and checking LUTs.

The ``latency`` cost model (LUT-predicted or measured) is :func:`autoprune.latency.timing.latency_cost`;
``COST_MODELS`` finds it through a lazy entry point, so importing this package registers nothing.
"""
