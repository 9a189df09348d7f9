"""Built-in models and user model factories."""

from autoprune.models.zoo import MODELS, build_model, load_checkpoint, model_from_name

__all__ = ["MODELS", "build_model", "load_checkpoint", "model_from_name"]
