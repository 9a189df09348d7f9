"""The sections of an experiment file, one dataclass each (defaults and docs per field), and
their cross-field validation (:meth:`ExperimentConfig.validate`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from autoprune.config.budget import BudgetConfig
from autoprune.config.checks import check_choice
from autoprune.config.inputs import DataConfig, ModelConfig
from autoprune.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    """SGD's momentum (``adamw`` uses its default betas)."""
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    """``sgd`` (with ``momentum``) or ``adamw`` (decoupled ``weight_decay``; what ConvNeXt and ViT models are
    trained with): base training, the fine-tune (at ``lr x finetune.lr_scale``) and every short fine-tune."""
    workers: int = 0
    """Base training on Ray Train with this many DDP workers (``batch_size`` is the global batch,
    split between them); 0 trains in-process (see :mod:`autoprune.pipeline.finetune`)."""

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"train.epochs must be >= 0 (got {self.epochs})")
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)


GRANULARITIES = ("channel", "fine", "nm")
SCOPES = ("layer", "global")
SCHEDULE_KINDS = ("cubic", "linear")


@dataclass
class PruningConfig:
    criterion: str = "l1"
    """Channel importance criterion (``l1``, ``l2``, ...)."""
    granularity: str = "channel"
    """``channel`` (physical removal), ``fine`` (unstructured) or ``nm`` (N:M)."""
    round_to: int | str = "auto"
    """Round kept channel counts to a multiple of this. ``auto``: 1, except under a latency budget priced by a
    LUT whose runtime runs some wider layers faster (kernels that favour multiples of 4, 8 or 16 channels):
    there the rounding whose random plans fitted to the budget keep the most FLOPs, when that is 1.1x or more
    of what they keep at 1 (resolved when the search starts; ``round_to`` in ``summary.json``)."""
    min_ratio: float = 0.2
    """Smallest preserve ratio a searcher may choose for a unit."""
    max_ratio: float = 1.0
    """Largest preserve ratio a searcher may choose for a unit."""
    p: float = 2.0
    """Norm order for the ``lp`` criterion."""
    n: int = 2
    """N of N:M sparsity (zeros per group)."""
    m: int = 4
    """M of N:M sparsity (group size)."""
    calibration_batches: int = 4
    """Batches used by data-driven criteria (taylor, apoz, hessian, reconstruction)."""
    scope: str = "layer"
    """``fine`` granularity: ``layer`` (each layer keeps its density) or ``global`` (one magnitude threshold)."""
    skip: list[str] = field(default_factory=list)
    """Layers kept at full width: glob patterns over module names (``[conv1, "layer3.*"]``); a unit
    is kept whole when any conv/linear of it matches."""

    def validate(self) -> None:
        check_choice("pruning.granularity", self.granularity, GRANULARITIES)
        check_choice("pruning.scope", self.scope, SCOPES)
        if not 0 < self.min_ratio <= self.max_ratio <= 1:
            raise ConfigError(
                f"pruning: need 0 < min_ratio <= max_ratio <= 1 (got {self.min_ratio}, {self.max_ratio})"
            )
        if isinstance(self.round_to, str) and self.round_to != "auto":
            raise ConfigError(f"pruning.round_to must be an integer >= 1 or auto (got {self.round_to!r})")
        if isinstance(self.round_to, int) and self.round_to < 1:
            raise ConfigError(f"pruning.round_to must be >= 1 or auto (got {self.round_to})")
        if any(not p.strip() for p in self.skip):
            raise ConfigError("pruning.skip: a pattern is empty (give module names or globs such as 'layer3.*')")


@dataclass
class EvaluationConfig:
    adaptive_bn_batches: int = 20
    """Training batches used to re-estimate BatchNorm statistics before scoring (0 disables)."""
    batch_size: int = 256
    score_samples: int | None = None
    """Score a plan on at most this many of the ``data.val_samples`` search-validation images
    (default: all of them)."""
    finetune_steps: int = 0
    """Score every plan a searcher evaluates after this many short-term fine-tuning batches (at the
    fine-tune's lr; NetAdapt's short-term fine-tune, for every searcher): slower, and closer to the
    accuracy after the fine-tune than adaptive BN alone. 0: the proxy alone."""
    cache_mb: float = 256.0
    """Keep the fixed adaptive-BN and calibration batches in memory while they take at most this many
    MB; beyond it they are read again (the same images) for every plan. 0 never keeps them."""

    def validate(self) -> None:
        if not self.cache_mb >= 0:
            raise ConfigError(f"evaluation.cache_mb must be >= 0 (got {self.cache_mb})")
        if self.finetune_steps < 0:
            raise ConfigError(f"evaluation.finetune_steps must be >= 0 (got {self.finetune_steps})")


@dataclass
class ScheduleConfig:
    """Iterative pruning: reach the plan in ``steps`` pruning steps, fine-tuning after each."""

    steps: int
    """Pruning steps (>= 1; 1 is one-shot)."""
    kind: str = "cubic"
    """How the pruned share grows with the steps: ``cubic`` (fast first, Zhu & Gupta 2017) or ``linear``."""

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"finetune.schedule.steps must be >= 1 (got {self.steps}); "
                              "1 prunes in one shot, e.g. finetune.schedule: {steps: 3}")
        check_choice("finetune.schedule.kind", self.kind, SCHEDULE_KINDS)


@dataclass
class FinetuneConfig:
    epochs: int = 3
    lr_scale: float = 0.1
    """Fine-tuning lr = train.lr x lr_scale (1/10 to 1/100 of the training lr)."""
    schedule: ScheduleConfig | None = None
    """Iterative pruning ``{steps: k, kind: cubic|linear}``; unset: one-shot."""
    rewind_epoch: int | None = None
    """Lottery-ticket rewinding: after each pruning step the survivors are reset to their weights
    after this many epochs of base training (0: the initial weights) and retrained at ``train.lr``;
    unset: no rewinding."""
    workers: int = 0
    """The long fine-tune on Ray Train with this many DDP workers, checkpointed every epoch into the
    run dir (``--resume`` continues from the last finished epoch); 0 fine-tunes in-process (also
    checkpointed). 1 runs on Ray Train and gives the in-process weights (see
    :mod:`autoprune.pipeline.finetune`)."""

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"finetune.epochs must be >= 0 (got {self.epochs})")
        if self.workers < 0:
            raise ConfigError(f"finetune.workers must be >= 0 (got {self.workers}); 0 fine-tunes in-process")
        iterative = self.schedule is not None and self.schedule.steps > 1
        if self.workers > 0 and (iterative or self.rewind_epoch is not None):
            key = "finetune.schedule" if iterative else "finetune.rewind_epoch"
            raise ConfigError(f"finetune.workers > 0 with {key} is not supported yet; set finetune.workers: 0 "
                              f"(in-process) or drop {key}")
        if self.schedule is not None:
            self.schedule.validate()
        if self.rewind_epoch is not None and self.rewind_epoch < 0:
            raise ConfigError(f"finetune.rewind_epoch must be >= 0 (got {self.rewind_epoch}); "
                              "0 rewinds to the initial weights")


@dataclass
class RayConfig:
    address: str | None = None
    """``null`` starts a local Ray on demand (honours RAY_ADDRESS); an address joins a cluster."""
    workers: int = 0
    """Evaluation actors; 0 evaluates in-process without Ray."""
    max_retries: int = 2
    """Retries of a failed evaluation or trial."""
    gpus_per_worker: float = 0.0
    """GPUs each evaluation actor and each ``autoprune run`` trial asks Ray for (fractions share a GPU,
    e.g. 0.25 puts four on one); each uses the GPU Ray gives it. 0: CPU only."""


DEVICES = ("auto", "cpu", "cuda", "mps")
"""``runtime.device`` values (``cuda:N`` too); ``auto`` is CUDA when available, else the CPU."""
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class RuntimeConfig:
    """Where and how the model runs (see :mod:`autoprune.device`): base training, adaptive BN,
    scoring, fine-tunes and data-driven criteria all follow it; artifacts are saved on the CPU."""

    device: str = "auto"
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` (``auto``: CUDA when available, else cpu)."""
    amp: str = "off"
    """Autocast for scoring and fine-tuning: ``off`` | ``bf16`` (CPU too) | ``fp16`` (CUDA; a GradScaler
    guards training)."""
    channels_last: bool = False
    """Models (and image batches) in channels-last memory format (faster convolutions on GPUs)."""
    num_workers: int = 0
    """DataLoader worker processes (0 reads in the calling process)."""
    pin_memory: bool = False
    """Page-locked host memory and non-blocking copies to the GPU."""

    def validate(self) -> None:
        device = str(self.device)
        if not (device in DEVICES or _is_cuda_index(device)):
            check_choice("runtime.device", device, (*DEVICES, "cuda:0"))
        check_choice("runtime.amp", self.amp, AMP_MODES)
        if self.num_workers < 0:
            raise ConfigError(f"runtime.num_workers must be >= 0 (got {self.num_workers}); 0 reads in-process")


def _is_cuda_index(device: str) -> bool:
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


@dataclass
class TrackingConfig:
    mlflow: bool = False
    """Log every trial (nested runs), the summary, plots and pruned model to MLflow (needs mlflow)."""
    uri: str | None = None
    """MLflow tracking URI; ``null``: ``MLFLOW_TRACKING_URI``, else a local store (``./mlflow.db``)."""
    tensorboard: bool = False
    """Write search progress to ``<run_dir>/tensorboard`` (needs tensorboardX or tensorboard)."""

    def validate(self) -> None:
        import importlib.util

        if self.mlflow and importlib.util.find_spec("mlflow") is None:
            raise ConfigError("tracking.mlflow needs the mlflow package; pip install 'autoprune[service]' "
                              "or set tracking.mlflow: false")
        if self.tensorboard and not any(importlib.util.find_spec(m) for m in ("tensorboardX", "tensorboard")):
            raise ConfigError("tracking.tensorboard needs tensorboardX (pip install tensorboardX) "
                              "or set tracking.tensorboard: false")


@dataclass
class RerankConfig:
    """Re-rank the proxy's top plans after a short fine-tune (see :mod:`autoprune.search.rerank`)."""

    top_k: int = 0
    """Distinct plans (the searcher's and the proxy's next best within the budget) to re-rank; 0: off."""
    steps: int = 50
    """Fine-tuning batches given to every re-ranked plan before it is scored again."""
    halving: bool = False
    """Successive halving: the better half goes on to a round at twice the steps, until one is left."""
    uniform: bool = False
    """Re-rank the uniform plan too (the largest single preserve ratio within the budget, what the
    ``uniform`` searcher returns): the result is then never a plan that the short fine-tune scores
    below uniform shrinking."""

    def __post_init__(self) -> None:
        if self.top_k < 0 or self.steps < 1:
            raise ConfigError(f"rerank: need top_k >= 0 and steps >= 1 (got {self.top_k}, {self.steps})")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(flops=0.5))
    luts: str | None = None
    """Directory of latency LUTs that ``budget.device`` is looked up in (default: ``$AUTOPRUNE_LUT_DIR``)."""
    pruning: PruningConfig = field(default_factory=PruningConfig)
    searcher: dict[str, Any] = field(default_factory=lambda: {"name": "random", "evaluations": 50})
    """Searcher name and its own keys (validated by the searcher)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Device, mixed precision, memory format and DataLoader settings (default: CPU, fp32)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Optional experiment tracking (MLflow, TensorBoard); off by default."""
    rerank: RerankConfig = field(default_factory=RerankConfig)
    """Re-ranking of the top plans by a short fine-tune after the search; off by default."""
    searchers: list[Any] | None = None
    """``autoprune run`` only: searchers to compare (names or searcher mappings)."""
    budgets: list[Any] | None = None
    """``autoprune run`` only: budgets to compare (mappings or ``flops=0.5`` strings)."""
    seeds: list[int] | None = None
    """``autoprune run`` only: seeds to repeat each combination with."""

    @property
    def searcher_name(self) -> str:
        return str(self.searcher.get("name", ""))

    def validate(self) -> None:
        self.budget.validate()
        if not self.name or any(c in self.name for c in '/\\\0') or self.name in (".", ".."):
            raise ConfigError(f"name {self.name!r} must be a non-empty file-name part (no '/', '\\')")
        if "name" not in self.searcher:
            raise ConfigError("searcher.name is required, e.g. searcher: {name: random}")
        if (self.model.name is None) == (self.model.factory is None):
            raise ConfigError("model: set exactly one of name or factory")
        if self.data.name is None and self.data.factory is None:
            self.data.name = "mnist5k"
        if self.data.name is not None and self.data.factory is not None:
            raise ConfigError("data: set exactly one of name or factory")
        self.data.validate()
        self.evaluation.validate()
        self.pruning.validate()
        self.train.validate()
        self.finetune.validate()
        self._check_finetune()
        if not (self.train.lr > 0 and self.finetune.lr_scale > 0):  # NaN fails too
            raise ConfigError("train.lr and finetune.lr_scale must be > 0")
        if self.data.val_samples < 1:
            raise ConfigError(f"data.val_samples must be >= 1 (got {self.data.val_samples})")
        if self.ray.workers < 0:
            raise ConfigError(f"ray.workers must be >= 0 (got {self.ray.workers})")
        if not self.ray.gpus_per_worker >= 0:  # NaN fails too
            raise ConfigError(f"ray.gpus_per_worker must be >= 0 (got {self.ray.gpus_per_worker}); 0 runs on CPUs")
        self.runtime.validate()
        if self.runtime.amp == "fp16" and self.ray.workers > 0 and not self.ray.gpus_per_worker > 0:
            raise ConfigError("runtime.amp: fp16 needs a GPU, but the evaluation actors get none "
                              "(ray.gpus_per_worker: 0); set ray.gpus_per_worker > 0 or runtime.amp: bf16")
        self.tracking.validate()
        self._check_ranges()

    def _check_finetune(self) -> None:
        """Fine-tune settings that depend on other sections."""
        ft = self.finetune
        if ft.schedule is not None and ft.schedule.steps > 1 and self.pruning.granularity == "nm":
            raise ConfigError("finetune.schedule does not apply to granularity nm (one fixed N:M pattern); "
                              "drop finetune.schedule or use pruning.granularity: fine")
        if ft.rewind_epoch is not None and ft.rewind_epoch > self.train.epochs:
            raise ConfigError(f"finetune.rewind_epoch {ft.rewind_epoch} is past the base training's "
                              f"{self.train.epochs} epochs (train.epochs); set it to at most {self.train.epochs}")
        if ft.rewind_epoch is not None and self.train.workers > 0:
            raise ConfigError("finetune.rewind_epoch records the early weights while the base model trains in-process; "
                              "set train.workers: 0 or drop finetune.rewind_epoch")
        if ft.rewind_epoch is not None and self.model.checkpoint:
            raise ConfigError("finetune.rewind_epoch needs the early weights recorded while this run trains its "
                              "base model, but model.checkpoint loads a trained one; drop finetune.rewind_epoch "
                              "or model.checkpoint")

    def _check_ranges(self) -> None:
        """Numbers that would otherwise fail deep inside torch or numpy with a traceback."""
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63) (got {self.seed})")
        minimum = {"train.batch_size": (self.train.batch_size, 1), "evaluation.batch_size": (self.evaluation.batch_size, 1),
                   "evaluation.adaptive_bn_batches": (self.evaluation.adaptive_bn_batches, 0),
                   "evaluation.score_samples": (self.evaluation.score_samples, 1), "data.resize": (self.data.resize, 1),
                   "data.channels": (self.data.channels, 1), "ray.max_retries": (self.ray.max_retries, 0),
                   "train.workers": (self.train.workers, 0)}
        for key, (value, low) in minimum.items():
            if value is not None and value < low:
                raise ConfigError(f"{key} must be >= {low} (got {value})")
        if not 0 < self.data.test_fraction < 1:
            raise ConfigError(f"data.test_fraction must be in (0, 1) (got {self.data.test_fraction})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
