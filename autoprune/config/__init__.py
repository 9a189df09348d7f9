"""Typed experiment configuration, loaded strictly from YAML.

Each section of an experiment file is a dataclass (:mod:`.sections`, :mod:`.inputs`, :mod:`.budget`); unknown or misspelled keys
and values of the wrong type are errors that name the key and suggest the fix (:mod:`.checks`).
``--set a.b=value`` overrides are applied to the raw mapping before validation, so they are
checked the same way (:mod:`.loading`).
"""

from autoprune.config.checks import (  # noqa: F401
    RENAMED,
    check_choice,
    from_dict,
    unknown_key,
)
from autoprune.config.inputs import AUGMENTS, DataConfig, ModelConfig  # noqa: F401
from autoprune.config.loading import (  # noqa: F401
    apply_overrides,
    dump_config,
    load_config,
    parse_budget,
    parse_override,
    read_yaml,
)
from autoprune.config.sections import (  # noqa: F401
    AMP_MODES,
    DEVICES,
    GRANULARITIES,
    SCHEDULE_KINDS,
    SCOPES,
    BudgetConfig,
    EvaluationConfig,
    ExperimentConfig,
    FinetuneConfig,
    PruningConfig,
    RayConfig,
    RerankConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrackingConfig,
    TrainConfig,
)
