"""Channel importance criteria, chosen by name (``pruning.criterion``).

A criterion is a small strategy object: ``scores(group)`` returns one number per channel of a
unit (higher = more important; the lowest are removed). Data-driven criteria set
``needs_data = True`` and get calibration batches through ``prepare`` before any scoring.
Register your own with ``@CRITERIA.register("name")`` on a factory taking the
:class:`~autoprune.config.PruningConfig`.

- :mod:`.base`: the :class:`Criterion` interface, :data:`CRITERIA` and :func:`get_criterion`;
- :mod:`.magnitude`: weight-only criteria (``l1``, ``l2``, ``lp``, ``bn_scale``);
- :mod:`.data_driven`: criteria that look at calibration batches (``taylor``, ``hessian``,
  ``apoz``, ``reconstruction``).

Importing this package registers all of them.
"""

from autoprune.core.criteria import data_driven, magnitude  # noqa: F401  (fill CRITERIA)
from autoprune.core.criteria.base import CRITERIA, Batch, Criterion, TorchPruningImportance, get_criterion

__all__ = ["CRITERIA", "Batch", "Criterion", "TorchPruningImportance", "get_criterion"]
