"""Sanity checks for saliency maps: model parameter randomisation (Adebayo et al., NeurIPS 2018).

Layers are re-initialised from the output end towards the input, on a deep copy of the model: cumulatively
(``mode="cascading"``) or one at a time with the others restored (``mode="independent"``). After each step the map
of the same class is compared with the original map by the absolute Spearman rank correlation and by SSIM. A
method that depends on the model passes when the similarity drops; a model-independent map (an edge detector)
keeps similarity 1.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.metrics._common import check_maps, check_metric_inputs, forward_in_chunks, resolve_explainer
from xaiimg.metrics.registry import register_metric
from xaiimg.metrics.results import MetricResult
from xaiimg.nn import preserved_state, resolve_targets
from xaiimg.ops import minmax_normalize, spearman_correlation


# --------------------------------------------------------------------------------------------- similarity
def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win_size: int = 7) -> torch.Tensor:
    """Mean structural similarity per sample ``[B]`` of ``[B,1,H,W]`` maps (Wang et al. 2004), as
    ``skimage.metrics.structural_similarity(a, b, data_range=data_range)`` with its defaults: a ``7x7`` uniform
    window, sample covariance, ``K1=0.01``, ``K2=0.03``, the mean taken over the pixels whose window fits inside
    the image (skimage crops ``(win_size-1)/2`` at each border)."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"ssim needs two [B,1,H,W] maps of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"ssim needs maps of at least {win_size}x{win_size} pixels, got {tuple(a.shape[-2:])}")
    a, b = a.double(), b.double()
    window = win_size * win_size
    covariance_norm = window / (window - 1)

    def local_mean(t):
        return F.avg_pool2d(t, win_size, stride=1)

    mean_a, mean_b = local_mean(a), local_mean(b)
    var_a = covariance_norm * (local_mean(a * a) - mean_a * mean_a)
    var_b = covariance_norm * (local_mean(b * b) - mean_b * mean_b)
    cov_ab = covariance_norm * (local_mean(a * b) - mean_a * mean_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * cov_ab + c2)) / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------- randomisation
def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters and have ``reset_parameters``, in definition order."""
    return [name for name, module in model.named_modules()
            if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))]


def randomise_layer(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module`` with its own ``reset_parameters`` under ``torch.manual_seed(seed)``, leaving the
    global random state as found (Quantus' ``get_random_layer_generator`` seeds ``seed + 1`` the same way)."""
    devices = [p.device for p in module.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        module.reset_parameters()


@dataclass
class RandomisationResult(MetricResult):
    """Similarity of each randomised model's maps to the original maps: ``spearman`` and ``ssim`` ``[L, B]`` for
    the ``layers`` in the order randomised (row ``l``: after randomising ``layers[:l+1]`` when cascading, only
    ``layers[l]`` when independent). Lower similarity means the method passes the check."""

    metric: ClassVar[str] = "model_randomisation"
    higher_is_better: ClassVar[dict[str, bool]] = {"spearman": False, "ssim": False}

    mode: str
    layers: list[str]
    targets: torch.Tensor
    spearman: torch.Tensor
    ssim: torch.Tensor

    def per_layer(self) -> dict[str, list]:
        """Sample-averaged similarities per layer, ready to plot (``layer`` in order, ``spearman``, ``ssim``)."""
        return {"layer": list(self.layers), "spearman": self.spearman.mean(dim=1).tolist(),
                "ssim": self.ssim.mean(dim=1).tolist()}

    def summary(self) -> dict[str, float]:
        """Similarities averaged over layers and samples (Quantus MPRT's ``return_average_correlation``)."""
        return {"spearman": self.spearman.mean().item(), "ssim": self.ssim.mean().item()}


def model_randomisation(model: nn.Module, explainer, x: torch.Tensor, target=None, mode: str = "cascading",
                        layers: Sequence[str] | None = None, seed: int = 0, absolute: bool = True,
                        batch_size: int = 64) -> RandomisationResult:
    """Adebayo et al.'s cascading or independent model-parameter randomisation test.

    ``explainer``: a method name, an ``Explainer`` or ``f(model, x, targets) -> [B,1,H,W]``; it must locate
    layers by name (it is run on a deep copy). ``target``: ``None`` uses the class the unrandomised model
    predicts, kept for every randomised model. ``layers``: module names to randomise (default
    :func:`randomisable_layers`); they are randomised from the output end (reverse definition order), each with
    :func:`randomise_layer` and ``seed``. ``absolute=True`` compares the absolute values of the maps (Adebayo et
    al.'s "ABS" variant; Quantus MPRT's ``abs=True``), ``False`` the signed maps. Spearman is taken on those maps,
    SSIM on them after per-sample min-max normalisation, with ``data_range=1``.
    The caller's model is never modified: everything runs on ``copy.deepcopy(model)``.
    """
    check_metric_inputs(model, x, target, batch_size)
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    explain = resolve_explainer(explainer)
    x = x.detach()
    subject = copy.deepcopy(model).eval()
    available = randomisable_layers(subject)
    if layers is None:
        chosen = available
    else:
        chosen = list(layers)
        unknown = [name for name in chosen if name not in available]
        if unknown or not chosen:
            raise ValueError(f"cannot randomise layers {unknown or chosen}: choose among {available}")
        chosen = [name for name in available if name in chosen]
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no layer with parameters to randomise")
    order = chosen[::-1]

    with preserved_state(subject):
        targets = resolve_targets(target, forward_in_chunks(subject, x, batch_size))

    def explain_maps() -> torch.Tensor:
        maps = check_maps(explain(subject, x, targets), x, "explainer")
        return maps.abs() if absolute else maps

    original = explain_maps()
    original_state = copy.deepcopy(subject.state_dict())
    spearman_rows, ssim_rows = [], []
    for name in order:
        if mode == "independent":
            subject.load_state_dict(original_state)
        randomise_layer(subject.get_submodule(name), seed)
        maps = explain_maps()
        spearman_rows.append(spearman_correlation(original, maps))
        ssim_rows.append(ssim(minmax_normalize(original), minmax_normalize(maps)))
    return RandomisationResult(mode=mode, layers=order, targets=targets, spearman=torch.stack(spearman_rows),
                               ssim=torch.stack(ssim_rows))


@register_metric("model-randomisation", category="sanity", result=RandomisationResult, explains=True,
                 paper="Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, Sanity Checks for Saliency Maps, "
                       "NeurIPS 2018")
def _model_randomisation_metric(model, inputs, explainer, targets=None, **options) -> RandomisationResult:
    """:func:`model_randomisation` in the registry's order; ``options``: ``mode``, ``layers``, ``seed``, ``absolute``,
    ``batch_size``."""
    return model_randomisation(model, explainer, inputs, target=targets, **options)
