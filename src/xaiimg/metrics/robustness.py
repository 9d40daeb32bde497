"""Robustness of explanations: max-sensitivity (Yeh et al., "On the (in)fidelity and sensitivity of
explanations", NeurIPS 2019), as Quantus ``MaxSensitivity``.

``SENS_max(x) = max_{d ~ U([-r, r]^n)} ||e(x + d) - e(x)||_F / ||e(x)||_F`` over ``samples`` draws of uniform noise
in the L-inf ball of radius ``r``, the class fixed to the one explained at ``x``. Lower is better.
Optionally the FGSM-attacked input ``x + r * sign(grad_x CE(f(x), class))`` (Goodfellow et al. 2015) is scored the
same way and reported beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.metrics._common import check_maps, check_metric_inputs, forward_in_chunks, resolve_explainer
from xaiimg.metrics.registry import register_metric
from xaiimg.metrics.results import MetricResult
from xaiimg.nn import frozen_parameters, preserved_state, resolve_targets
from xaiimg.ops import batches


def uniform_linf_noise(shape: torch.Size, radius: float, samples: int, generator: torch.Generator,
                       dtype=torch.float32, device=None) -> torch.Tensor:
    """``samples`` draws ``[samples, *shape]`` of noise uniform in ``[-radius, radius]`` per element."""
    unit = torch.rand((samples, *shape), generator=generator, dtype=dtype, device=device)
    return (2 * unit - 1) * radius


def fgsm(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, radius: float) -> torch.Tensor:
    """Untargeted FGSM step ``x + radius * sign(grad_x cross_entropy(model(x), targets))`` (one forward+backward)."""
    with preserved_state(model), frozen_parameters(model), torch.enable_grad():
        attacked = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(attacked), targets, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, attacked)
    return (x + radius * gradient.sign()).detach()


@dataclass
class SensitivityResult(MetricResult):
    """Max-sensitivity per sample ``[B]``, all sampled ratios ``[B, samples]``, and the FGSM ratio if asked."""

    metric: ClassVar[str] = "max_sensitivity"
    higher_is_better: ClassVar[dict[str, bool]] = {"max_sensitivity": False, "fgsm_sensitivity": False}

    radius: float
    targets: torch.Tensor
    sampled: torch.Tensor
    fgsm_sensitivity: torch.Tensor | None

    @property
    def max_sensitivity(self) -> torch.Tensor:
        return self.sampled.max(dim=1).values

    def summary(self) -> dict[str, float]:
        fgsm_mean = self.fgsm_sensitivity.mean().item() if self.fgsm_sensitivity is not None else float("nan")
        return {"max_sensitivity": self.max_sensitivity.mean().item(), "fgsm_sensitivity": fgsm_mean}


def max_sensitivity(explainer, model: nn.Module, x: torch.Tensor, target=None, radius: float = 0.2,
                    samples: int = 10, seed: int = 0, attack: str | None = None,
                    batch_size: int = 64) -> SensitivityResult:
    """Max-sensitivity of ``explainer`` at ``x`` (see the module docstring).

    ``explainer``: a method name, an ``Explainer`` or ``f(model, x, targets) -> [B,1,H,W]``. ``target``: ``None``
    uses the predicted class at ``x`` for every perturbed copy. The ``samples * B`` noisy inputs are explained
    ``batch_size`` at a time; the noise comes from a ``torch.Generator`` seeded with ``seed`` on ``x``'s device
    (draw order: :func:`uniform_linf_noise` of shape ``x.shape``). ``attack="fgsm"`` adds the FGSM input.
    """
    check_metric_inputs(model, x, target, batch_size)
    if radius <= 0 or samples < 1:
        raise ValueError(f"radius must be > 0 and samples >= 1, got radius={radius}, samples={samples}")
    if attack not in (None, "fgsm"):
        raise ValueError(f"attack must be None or 'fgsm', got {attack!r}")
    explain = resolve_explainer(explainer)
    x = x.detach()
    batch = x.shape[0]
    with preserved_state(model), torch.no_grad():
        targets = resolve_targets(target, forward_in_chunks(model, x, batch_size))
    reference = check_maps(explain(model, x, targets), x, "explainer").reshape(batch, -1)
    reference_norm = reference.norm(dim=1)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    noise = uniform_linf_noise(x.shape, radius, samples, generator, dtype=x.dtype, device=x.device)
    noisy = (x.unsqueeze(0) + noise).reshape(samples * batch, *x.shape[1:])
    repeated_targets = targets.repeat(samples)
    maps = torch.cat([check_maps(explain(model, noisy[chunk], repeated_targets[chunk]), noisy[chunk], "explainer")
                      for chunk in batches(samples * batch, batch_size)])
    differences = (maps.reshape(samples, batch, -1) - reference.unsqueeze(0)).norm(dim=2)
    sampled = (differences / reference_norm.unsqueeze(0)).T
    fgsm_ratio = None
    if attack == "fgsm":
        attacked = fgsm(model, x, targets, radius)
        attacked_maps = check_maps(explain(model, attacked, targets), x, "explainer").reshape(batch, -1)
        fgsm_ratio = (attacked_maps - reference).norm(dim=1) / reference_norm
    return SensitivityResult(radius=float(radius), targets=targets, sampled=sampled,
                             fgsm_sensitivity=fgsm_ratio)


@register_metric("max-sensitivity", category="robustness", result=SensitivityResult, explains=True,
                 paper="Yeh, Hsieh, Suggala, Inouye & Ravikumar, On the (In)fidelity and Sensitivity of Explanations, "
                       "NeurIPS 2019")
def _max_sensitivity_metric(model, inputs, explainer, targets=None, **options) -> SensitivityResult:
    """:func:`max_sensitivity` in the registry's order; ``options``: ``radius``, ``samples``, ``seed``, ``attack``,
    ``batch_size``."""
    return max_sensitivity(explainer, model, inputs, target=targets, **options)
