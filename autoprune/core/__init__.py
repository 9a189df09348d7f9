"""The pruning core: unit graph, plans, applying plans (granularity, criteria), one cost counter,
iterative pruning and the training loops. Depends only on the base modules (config, errors,
registry, atomic)."""
