"""Saliency methods behind one API.

``explain(method, model, x, target=None, **params)`` runs a method given by registry name (``"grad-cam"``,
``"msg-cam"``, ...) or as an :class:`Explainer` instance. Every module in this package registers its methods
with :func:`xaiimg.methods.base.register`; they are imported on first lookup.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil

from xaiimg.methods.base import Explainer, register, registry
from xaiimg.nn import TargetLike

__all__ = ["Explainer", "available_methods", "explain", "get_method", "register"]

_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    _load_all()
    return sorted(registry())


def get_method(method: str | Explainer, **params) -> Explainer:
    """An explainer instance from a registry name and its parameters (or the instance itself)."""
    if isinstance(method, Explainer):
        if params:
            raise TypeError("parameters are given to the explainer's constructor, not to explain()")
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a registered name or an Explainer, got {type(method).__name__}")
    _load_all()
    if method not in registry():
        close = difflib.get_close_matches(method, list(registry()), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown method {method!r}{hint} (available: {', '.join(sorted(registry()))})")
    return registry()[method](**params)


def explain(method: str | Explainer, model, x, target: TargetLike = None, normalize: bool = True,
            device=None, autocast=None, **params):
    """Saliency maps ``[B,1,H,W]`` (min-max per sample in [0,1] when ``normalize``) for a batch ``x``.

    ``target``: ``None`` (predicted class), an int, or one int per sample. ``device`` (``None``: the input's) and
    ``autocast`` (``None``, ``"bfloat16"``, ``"float16"``): see :meth:`Explainer.__call__`; the maps come back on
    the input's device in its dtype and the model is left where it was.
    """
    return get_method(method, **params)(model, x, target=target, normalize=normalize, device=device,
                                        autocast=autocast)


def __getattr__(name):
    _load_all()
    for cls in registry().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'xaiimg.methods' has no attribute {name!r}")
