"""Benchmarks: ``python -m benchmarks.<name>``; results in benchmarks/results/<name>.json and .md."""
