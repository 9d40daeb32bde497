"""The LRP explainer: ``xaiimg.explain("lrp", model, x, composite="epsilon-gamma-box")``."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from xaiimg.methods.base import Explainer, register
from xaiimg.methods.lrp.composites import COMPOSITES, Composite, make_composite
from xaiimg.nn import TargetLike, frozen_parameters, resolve_targets


def unit_range_bounds(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z^B bounds of images in [0,1] mapped into the model's input space by ``model.spec`` (mean/std),
    shaped ``[1,C,1,1]``."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("the z^B rule needs input bounds: pass low=... and high=... (in the model's normalised "
                         "input space) or use a model with a `spec` (mean/std of its input normalisation)")
    shape = (1, x.shape[1], 1, 1)
    low = spec.from_unit_range(torch.zeros(shape, dtype=x.dtype, device=x.device))
    high = spec.from_unit_range(torch.ones(shape, dtype=x.dtype, device=x.device))
    return low, high


_IN_PLACE_ERRORS = ("is a view and is being modified inplace",  # the output of a Pass-rule activation
                    "modified by an inplace operation")         # a ReLU's output (ReLUs keep their own backward)


@contextmanager
def _in_place_activation_changes_explained() -> Iterator[None]:
    """Turn autograd's in-place errors into one that says what to change in the model."""
    try:
        yield
    except RuntimeError as error:
        if not any(message in str(error) for message in _IN_PLACE_ERRORS):
            raise
        raise ValueError("LRP: the model modifies the output of an activation in place (e.g. `x += y` right after "
                         "a ReLU/ReLU6/SiLU/GELU); LRP hands activation outputs on without a copy and needs them "
                         "unchanged, so make that operation out of place (`x = x + y`)") from error


@register("lrp")
class LRP(Explainer):
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) of the target logit.

    ``composite``: a name from :data:`~.composites.COMPOSITES` (default ``"epsilon-gamma-box"``: z^B for the
    input layer, gamma for the other convolutions, epsilon for dense layers) or a :class:`~.composites.Composite`.
    ``epsilon``: of the epsilon rule; ``gamma``: of the gamma rule; ``stabilizer``: the epsilon of every other
    rule; ``low``/``high``: z^B bounds in the model's input space, by default images in [0,1] mapped through
    ``model.spec``'s normalisation. The relevance at the output is the logit itself, so with conservative rules
    the input relevance sums to it. Maps are the relevance summed over input channels, ``[B,1,H,W]``, signed
    (``normalize=False`` in :func:`xaiimg.explain` returns them raw). One forward and one modified backward pass.
    """

    default_composite = "epsilon-gamma-box"

    def __init__(self, composite: str | Composite | None = None, epsilon: float = 1e-6, gamma: float = 0.25,
                 stabilizer: float = 1e-6, low: float | torch.Tensor | None = None,
                 high: float | torch.Tensor | None = None):
        composite = self.default_composite if composite is None else composite
        if isinstance(composite, str) and composite not in COMPOSITES:
            raise ValueError(f"unknown LRP composite {composite!r}; available: {', '.join(COMPOSITES)}")
        if not isinstance(composite, (str, Composite)):
            raise TypeError(f"composite must be a name or a Composite, got {type(composite).__name__}")
        if (low is None) != (high is None):
            raise ValueError("give both low and high (z^B input bounds) or neither")
        self.composite = composite
        self.epsilon, self.gamma, self.stabilizer = epsilon, gamma, stabilizer
        self.low, self.high = low, high

    def make_composite(self, model: nn.Module, x: torch.Tensor) -> Composite:
        if isinstance(self.composite, Composite):
            return self.composite
        low, high = self.low, self.high
        if self.composite.endswith("-box") and low is None:
            low, high = unit_range_bounds(model, x)
        return make_composite(self.composite, epsilon=self.epsilon, gamma=self.gamma, stabilizer=self.stabilizer,
                              low=low, high=high)

    def relevance(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input relevance ``[B,C,H,W]`` and the logits ``[B,K]`` (of the canonized model) it decomposes."""
        composite = self.make_composite(model, x)
        x = x.detach().requires_grad_()
        with frozen_parameters(model), composite.context(model, x) as attribution, torch.enable_grad():
            with _in_place_activation_changes_explained():
                logits = model(x)
            if logits.ndim != 2:
                raise ValueError(f"LRP needs model outputs [B, classes], got shape {tuple(logits.shape)}")
            targets = resolve_targets(target, logits)
            one_hot = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)
            with _in_place_activation_changes_explained():
                gradient, = torch.autograd.grad(logits, x, one_hot)
            relevance = attribution.relevance(gradient)
        return relevance.detach(), logits.detach()

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        return self.relevance(model, x, target)[0].sum(dim=1, keepdim=True)


def _alias(composite_name: str) -> type[LRP]:
    class Alias(LRP):
        default_composite = composite_name

        def __init__(self, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
                     low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None):
            super().__init__(composite_name, epsilon, gamma, stabilizer, low, high)

    Alias.__doc__ = f"LRP with the ``{composite_name}`` composite (see :class:`LRP`)."
    Alias.__name__ = Alias.__qualname__ = "LRP" + "".join(
        part.capitalize() for part in composite_name.replace("+", "-").split("-"))
    return register(f"lrp-{composite_name}")(Alias)


ALIASES = {name: _alias(name) for name in COMPOSITES}
