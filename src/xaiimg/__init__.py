"""xaiimg: saliency maps for image classifiers and metrics for how good they are.

Heavy dependencies (torch, timm, captum) load on first use, so ``import xaiimg`` stays fast::

    import xaiimg as xi
    model = xi.load_model("efficientnet_lite0")
    x = model.preprocess(xi.data.sample_images(["chelsea"]))
    sal = xi.explain("grad-cam", model, x)          # [B,1,H,W] in [0,1]
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "load_model": ("xaiimg.models", "load_model"),
    "explain": ("xaiimg.methods", "explain"),
    "available_methods": ("xaiimg.methods", "available_methods"),
}
_LAZY_SUBMODULES = {"models", "methods", "metrics", "data", "ops", "nn", "passes", "stats", "viz", "report", "cli",
                    "training", "studies"}


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        module_name, attribute = _LAZY_ATTRIBUTES[name]
        value = getattr(import_module(module_name), attribute)
    elif name in _LAZY_SUBMODULES:
        value = import_module(f"xaiimg.{name}")
    else:
        raise AttributeError(f"module 'xaiimg' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES) | _LAZY_SUBMODULES)
