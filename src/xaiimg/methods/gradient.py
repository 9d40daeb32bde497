"""Input-attribution baselines: gradient, SmoothGrad, Integrated Gradients and Occlusion as thin adapters over
Captum, and Guided Backprop as rectifier gates of our own (Captum guides only ``nn.ReLU``; EfficientNet-Lite uses
ReLU6), equal to Captum's on ReLU networks.

Captum returns attributions ``[B,C,H,W]`` per input channel; each method reduces them to one map ``[B,1,H,W]`` by
``channel_reduction`` (:mod:`xaiimg.methods.input_attribution_base`: ``"abs-max"`` by default, ``"sum"`` for
Occlusion, or ``"abs-sum"``).

The signal is the raw logit of the target class (PROTOCOLS "Common conventions"), except Occlusion whose
``score`` defaults to the softmax probability (a perturbation weight). Targets: ``None`` (predicted class), an
int or one int per sample. Gradient and Guided Backprop resolve ``None`` inside their single forward; SmoothGrad,
Integrated Gradients and Occlusion need the targets before Captum's first pass, so ``target=None`` costs them one
extra prediction forward of the batch (no backward).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from xaiimg.methods.base import check_positive_int, register
from xaiimg.methods.input_attribution_base import ChannelReduced
from xaiimg.nn import TargetLike, explicit_targets, num_classes_of, resolve_targets, select_scores

__all__ = ["Gradient", "GuidedBackprop", "IntegratedGradients", "Occlusion", "SmoothGrad"]


def _target_scores(model: nn.Module, target: TargetLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward function for Captum with ``target=None``: the target logit of each sample ``[B]``, with targets
    resolved from the logits of this very forward (so ``target=None`` costs no extra pass)."""

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        logits = model(inputs)
        return select_scores(logits, resolve_targets(target, logits))

    return forward


def _checked_outputs(model: nn.Module, targets: torch.Tensor, probability: bool = False
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward function for Captum with explicit targets: logits (or softmax probabilities), after checking on the
    first forward that every target indexes a class of this model."""
    checked = False

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        nonlocal checked
        logits = model(inputs)
        if not checked and (targets >= logits.shape[-1]).any():
            raise ValueError(f"target class index {targets.tolist()} out of range for a model with "
                             f"{logits.shape[-1]} classes")
        checked = True
        return logits.softmax(dim=-1) if probability else logits

    return forward


def _targets_before_passes(model: nn.Module, x: torch.Tensor, target: TargetLike) -> torch.Tensor:
    """Per-sample targets ``[B]`` before any pass: ``None`` costs one prediction forward (no graph)."""
    if target is None:
        with torch.no_grad():
            return resolve_targets(None, model(x))
    num_classes = num_classes_of(model) or torch.iinfo(torch.int32).max   # checked again on the logits
    return explicit_targets(target, x.shape[0], num_classes, x.device)


@register("gradient")
class Gradient(ChannelReduced):
    """Vanilla gradient ``dS_k/dx`` (Simonyan et al. 2014; Captum ``Saliency(abs=False)``), then the channel
    reduction (``abs-max`` by default = Simonyan's map). One forward, one backward."""

    def input_attributions(self, model, x, target):
        from captum.attr import Saliency

        return Saliency(_target_scores(model, target)).attribute(x, abs=False)


@register("guided-backprop")
class GuidedBackprop(ChannelReduced):
    """Guided Backpropagation (Springenberg et al., ICLR-W 2015): at every rectifier the backward signal is
    ``R_l = 1[a in its linear range] * max(R_{l+1}, 0)``, i.e. the layer's own derivative times the positive part of
    the gradient arriving from above (Captum's ``GuidedBackprop`` for ``nn.ReLU``: ``relu(grad_input)``).

    Applied to ``nn.ReLU`` (linear range ``a > 0``) and to the clipped rectifiers ``nn.ReLU6`` and
    ``nn.Hardtanh(min_val=0)`` (``0 < a < max_val``, where their derivative is 1), so EfficientNet-Lite's ReLU6
    network is guided too; in-place modules work, the range is read from the module's output. A network with other
    activations (SiLU, GELU, ...), for which the guided rule is not defined, is refused. One forward, one backward;
    the gates are forward hooks removed on exit, also on error.
    """

    def input_attributions(self, model, x, target):
        rectifiers = [m for m in model.modules() if _linear_range(m) is not None]
        unsupported = sorted({type(m).__name__ for m in model.modules()
                              if isinstance(m, _OTHER_ACTIVATIONS) and _linear_range(m) is None})
        if unsupported or not rectifiers:
            found = f"it has {', '.join(unsupported)}" if unsupported else "it has no rectifier module"
            raise ValueError(f"guided-backprop needs a network whose activations are rectifier modules (nn.ReLU, "
                             f"nn.ReLU6, nn.Hardtanh from 0), but {found}")
        with _guided(rectifiers):
            logits = model(x)
            scores = select_scores(logits, resolve_targets(target, logits))
            (gradient,) = torch.autograd.grad(scores.sum(), x)
        return gradient


def _linear_range(module: nn.Module) -> tuple[float, float] | None:
    """``(low, high)`` where a rectifier module's derivative is 1, or None for any other module."""
    if isinstance(module, nn.ReLU):
        return 0.0, float("inf")
    if isinstance(module, nn.Hardtanh) and module.min_val == 0:      # nn.ReLU6 is Hardtanh(0, 6)
        return 0.0, float(module.max_val)
    return None


class _GuidedGate(torch.autograd.Function):
    """Identity forward; backward ``mask * max(grad, 0)`` (the rectifier's own backward multiplies by the same
    mask again, which changes nothing)."""

    @staticmethod
    def forward(ctx, output, mask):
        ctx.save_for_backward(mask)
        return output.clone()

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad.clamp_min(0) * mask, None


@contextmanager
def _guided(rectifiers: list[nn.Module]) -> Iterator[None]:
    """Forward hooks that pass each rectifier's output through :class:`_GuidedGate`; removed on exit."""

    def gate(module, _inputs, output):
        low, high = _linear_range(module)
        return _GuidedGate.apply(output, ((output > low) & (output < high)).to(output.dtype))

    handles = [module.register_forward_hook(gate) for module in rectifiers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


_OTHER_ACTIVATIONS = (nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                      nn.Mish, nn.Hardswish, nn.Softplus)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Global RNG seeded inside, restored afterwards (Captum's NoiseTunnel draws with ``torch.normal``)."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@register("smoothgrad")
class SmoothGrad(ChannelReduced):
    """SmoothGrad (Smilkov et al. 2017, eq. 3): the mean of ``dS_k/dx`` over ``n_samples`` copies
    ``x + N(0, sigma^2)``, then the channel reduction (Captum ``NoiseTunnel(Saliency(abs=False))``, "smoothgrad").

    Noise: ``sigma = noise_level * (max(x_b) - min(x_b))`` per image, over the model-input tensor (Smilkov's
    "noise level" with their recommended 10-20%; default 0.15). Captum's ``stdevs`` is an absolute standard
    deviation, so each image is passed with ``stdevs = sigma_b``. Noise is drawn from the global RNG forked and
    seeded with ``seed`` for every image, so an image's map depends only on the image and the seed (bit-identical
    for the same seed, also alone vs. in a batch) and the caller's RNG state is left untouched.
    Passes: ``ceil(n_samples / batch_size)`` forwards and backwards per image (``batch_size`` noisy copies each),
    plus one prediction forward of the batch when ``target=None``.
    """

    def __init__(self, n_samples: int = 50, noise_level: float = 0.15, seed: int = 0, batch_size: int = 50,
                 channel_reduction: str = "abs-max"):
        super().__init__(channel_reduction)
        if n_samples < 1 or noise_level < 0:
            raise ValueError(f"need n_samples >= 1 and noise_level >= 0, got {n_samples}, {noise_level}")
        self.n_samples = n_samples
        self.noise_level = noise_level
        self.seed = seed
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def input_attributions(self, model, x, target):
        from captum.attr import NoiseTunnel, Saliency

        targets = _targets_before_passes(model, x, target)
        smoothgrad = NoiseTunnel(Saliency(_checked_outputs(model, targets)))
        maps = []
        value_ranges, image_targets = _per_image_host_values(x, targets)
        for index, (value_range, image_target) in enumerate(zip(value_ranges, image_targets)):
            with _seeded(self.seed, x.device):
                maps.append(smoothgrad.attribute(
                    x[index:index + 1], nt_type="smoothgrad", nt_samples=self.n_samples,
                    nt_samples_batch_size=min(self.batch_size, self.n_samples), stdevs=self.noise_level * value_range,
                    target=image_target, abs=False))
        return torch.cat(maps)


def _per_image_host_values(x: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[int]]:
    """Each image's ``max - min`` and target as Python numbers, before the loop over images: Captum's NoiseTunnel
    takes ``stdevs`` as floats and reads a one-image target with ``.item()``, so one transfer each per call."""
    flat = x.detach().flatten(1)
    return (flat.amax(dim=1) - flat.amin(dim=1)).tolist(), targets.tolist()


@register("integrated-gradients")
class IntegratedGradients(ChannelReduced):
    """Integrated Gradients (Sundararajan et al., ICML 2017, eq. 1; Captum ``IntegratedGradients``):
    ``(x - x') * integral_0^1 dS_k/dx (x' + a (x - x')) da`` with ``n_steps`` Gauss-Legendre nodes (Captum's
    default ``method``) and baseline ``x' = baseline`` (default 0 in model-input space, i.e. the normalisation
    mean colour). ``batch_size``: images per forward, at least two steps of the batch (Captum's minimum).
    Passes: ``ceil(n_steps / steps_per_batch)`` forwards and backwards, plus one prediction forward when
    ``target=None``."""

    def __init__(self, n_steps: int = 50, baseline: float = 0.0, method: str = "gausslegendre",
                 batch_size: int = 64, channel_reduction: str = "abs-max"):
        super().__init__(channel_reduction)
        self.n_steps = n_steps
        self.baseline = baseline
        self.method = method
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def input_attributions(self, model, x, target):
        from captum.attr import IntegratedGradients as CaptumIntegratedGradients

        targets = _targets_before_passes(model, x, target)
        return CaptumIntegratedGradients(_checked_outputs(model, targets)).attribute(
            x, baselines=self.baseline, target=targets, n_steps=self.n_steps, method=self.method,
            internal_batch_size=max(self.batch_size, 2 * x.shape[0]))


@register("occlusion")
class Occlusion(ChannelReduced):
    """Occlusion (Zeiler & Fergus, ECCV 2014; Captum ``Occlusion``): slide a ``window`` x ``window`` patch of
    ``baseline`` (0 in model-input space) over all channels with ``stride``; each pixel gets the mean drop
    ``S_k(x) - S_k(x_occluded)`` over the windows covering it. ``score``: ``"probability"`` (softmax, Zeiler &
    Fergus's class probability; default) or ``"logit"``. ``batch_size``: occluded images per forward.
    Captum 0.9 averages over windows in float32, so float64 inputs get float32-precise maps.
    Passes (no backward): Captum's unoccluded forward, ``ceil(n_windows / max(1, batch_size // B))`` occluded
    forwards, plus one prediction forward when ``target=None``."""

    def __init__(self, window: int = 32, stride: int = 16, baseline: float = 0.0, score: str = "probability",
                 batch_size: int = 64, channel_reduction: str = "sum"):
        super().__init__(channel_reduction)
        if score not in ("probability", "logit"):
            raise ValueError(f"score must be 'probability' or 'logit', got {score!r}")
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
        self.window = window
        self.stride = stride
        self.baseline = baseline
        self.score = score
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def input_attributions(self, model, x, target):
        from captum.attr import Occlusion as CaptumOcclusion

        if self.window > min(x.shape[-2:]):
            raise ValueError(f"occlusion window {self.window} is larger than the image {tuple(x.shape[-2:])}")
        targets = _targets_before_passes(model, x, target)
        with torch.no_grad():
            attributions = CaptumOcclusion(_checked_outputs(model, targets, self.score == "probability")).attribute(
                x, sliding_window_shapes=(x.shape[1], self.window, self.window),
                strides=(x.shape[1], self.stride, self.stride), baselines=self.baseline, target=targets,
                perturbations_per_eval=max(1, self.batch_size // x.shape[0]))
        return attributions.to(x.dtype)   # Captum divides by the window counts in float32
