"""Built-in models and user model factories."""

from autoprune.models.zoo import MODELS, build_model, load_checkpoint

__all__ = ["MODELS", "build_model", "load_checkpoint"]
