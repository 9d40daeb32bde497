"""Models: the offline zoo (``load_model``), the aesthetic model, the synthetic-benchmark models."""
from xaiimg.models.zoo import (ModelSpec, WeightsNotFoundError, attach_spec, available_models, load_model,
                               spec_of, top_k)

__all__ = ["ModelSpec", "WeightsNotFoundError", "attach_spec", "available_models", "load_model", "spec_of", "top_k"]
