"""The pipeline: session set-up, run directories, the Ray evaluator pool, multi-run experiments,
fine-tuning, export and reports. Imports the agents; only the CLI imports it."""
