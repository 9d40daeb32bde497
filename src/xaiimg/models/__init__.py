"""Models: the offline zoo (``load_model``), user checkpoints, the aesthetic model, the synthetic-benchmark models."""
from xaiimg.models.zoo import (
                               CheckpointError,
                               ModelSpec,
                               WeightsNotFoundError,
                               attach_spec,
                               available_models,
                               load_checkpoint_model,
                               load_model,
                               spec_of,
                               top_k,
)

__all__ = ["CheckpointError", "ModelSpec", "WeightsNotFoundError", "attach_spec", "available_models",
           "load_checkpoint_model", "load_model", "spec_of", "top_k"]
