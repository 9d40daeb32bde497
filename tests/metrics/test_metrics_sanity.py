"""Model randomisation sanity check: similarity measures, negative/positive controls, Quantus MPRT cross-check."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from xaiimg.methods.base import Explainer
from xaiimg.metrics import model_randomisation, randomisable_layers, spearman_correlation, ssim
from xaiimg.nn import select_scores


class Gradient(Explainer):
    """|d logit_target / d x| summed over channels (Simonyan et al. 2014), a model-dependent map."""

    def attribute(self, model, x, target=None):
        with torch.enable_grad():
            inputs = x.clone().requires_grad_(True)
            logits = model(inputs)
            targets = torch.as_tensor(target).expand(x.shape[0]) if target is not None else logits.argmax(-1)
            (gradient,) = torch.autograd.grad(select_scores(logits, targets).sum(), inputs)
        return gradient.abs().sum(dim=1, keepdim=True)


class SignedGradient(Explainer):
    """d logit_target / d x summed over channels, signed."""

    def attribute(self, model, x, target=None):
        with torch.enable_grad():
            inputs = x.clone().requires_grad_(True)
            logits = model(inputs)
            (gradient,) = torch.autograd.grad(select_scores(logits, torch.as_tensor(target)).sum(), inputs)
        return gradient.sum(dim=1, keepdim=True)


class SobelEdges(Explainer):
    """Gradient magnitude of the image itself: ignores the model (Adebayo et al.'s edge-detector control)."""

    def attribute(self, model, x, target=None):
        kernel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype)
        gray = x.mean(dim=1, keepdim=True)
        gx = F.conv2d(gray, kernel.view(1, 1, 3, 3), padding=1)
        gy = F.conv2d(gray, kernel.t().reshape(1, 1, 3, 3), padding=1)
        return (gx ** 2 + gy ** 2).sqrt()


def test_spearman_golden_values_and_scipy():
    a = torch.tensor([[1.0, 2, 2, 3], [1.0, 2, 3, 4]])
    b = torch.tensor([[1.0, 2, 3, 4], [4.0, 3, 2, 1]])
    assert spearman_correlation(a, b).tolist() == pytest.approx([3 / np.sqrt(10), -1.0])  # average ranks for ties
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 9, 9, generator=generator) * 5).round()
    y = x + torch.rand(3, 1, 9, 9, generator=generator) * 3
    expected = [scipy.stats.spearmanr(x[i].ravel(), y[i].ravel()).statistic for i in range(3)]
    assert spearman_correlation(x, y).tolist() == pytest.approx(expected, abs=1e-12)


def test_ssim_golden_values_and_skimage():
    from skimage.metrics import structural_similarity

    zeros, tenth = torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.1)
    c1 = 0.01 ** 2
    assert ssim(zeros, tenth).item() == pytest.approx(c1 / (0.1 ** 2 + c1))  # flat maps: luminance term only
    assert ssim(tenth, tenth).item() == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 20, 17, generator=generator, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(2, 1, 20, 17, generator=generator, dtype=torch.float64)).clamp(0, 1)
    expected = [structural_similarity(a[i, 0].numpy(), b[i, 0].numpy(), data_range=1.0) for i in range(2)]
    assert ssim(a, b).tolist() == pytest.approx(expected, abs=1e-12)


def _inputs(tiny_cnn):
    model = tiny_cnn.double()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x


def test_edge_detector_similarity_does_not_drop(tiny_cnn):
    model, x = _inputs(tiny_cnn)
    for mode in ("cascading", "independent"):
        result = model_randomisation(model, SobelEdges(), x, mode=mode, seed=3)
        assert result.layers == ["classifier", "features.2", "features.0"]
        assert torch.allclose(result.spearman, torch.ones(3, 2, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(result.ssim, torch.ones(3, 2, dtype=torch.float64), atol=1e-12)


def test_gradient_similarity_drops_and_model_untouched(tiny_cnn):
    model, x = _inputs(tiny_cnn)
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    x_before = x.clone()
    rng_before = torch.random.get_rng_state()
    result = model_randomisation(model, Gradient(), x, mode="cascading", seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert model.training and torch.equal(x, x_before)
    fully_random = result.per_layer()
    assert fully_random["layer"] == ["classifier", "features.2", "features.0"]
    assert fully_random["spearman"][-1] < 0.5 and fully_random["ssim"][-1] < 0.5
    assert result.spearman.shape == (3, 2) and set(result.summary()) == {"spearman", "ssim"}
    assert result.higher_is_better == {"spearman": False, "ssim": False}
    again = model_randomisation(model, Gradient(), x, mode="cascading", seed=3)
    assert torch.equal(again.spearman, result.spearman)


def test_cross_check_quantus_mprt(tiny_cnn):
    """Quantus MPRT with the same explanation function (signed input gradient, unnormalised) and Spearman:
    Quantus seeds ``torch.manual_seed(seed + 1)`` before each layer's reset_parameters, so its seed 42 is our seed
    43; layer_order 'top_down' = cascading, 'independent' = independent; Quantus ``abs`` = our ``absolute`` (both
    take the absolute value of the maps), ``normalise=False`` (Spearman ignores Quantus' division by the max)."""
    quantus = pytest.importorskip("quantus")
    model, x = _inputs(tiny_cnn)
    targets = model(x).argmax(-1)

    def signed_gradient(model, inputs, targets):
        inputs = torch.as_tensor(inputs, dtype=torch.float64)
        return SignedGradient()(model, inputs, torch.as_tensor(targets).tolist(), normalize=False)

    for order, mode, absolute in (("top_down", "cascading", True), ("independent", "independent", False)):
        metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, layer_order=order,
                              seed=42, abs=absolute, normalise=False, disable_warnings=True)
        scores = metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=None, channel_first=True,
                        explain_func=lambda model, inputs, targets, **_: signed_gradient(model, inputs,
                                                                                           targets).numpy(),
                        device="cpu")
        ours = model_randomisation(model, signed_gradient, x, target=targets.tolist(), mode=mode, seed=43,
                                   absolute=absolute)
        # Quantus lists independent layers input-first; the scores do not depend on the order there.
        assert list(scores)[1:] == (ours.layers if mode == "cascading" else ours.layers[::-1])
        expected = np.array([scores[name] for name in ours.layers])
        np.testing.assert_allclose(ours.spearman.numpy(), expected, atol=1e-10)


def test_layers_argument_and_errors(tiny_cnn):
    model, x = _inputs(tiny_cnn)
    assert randomisable_layers(model) == ["features.0", "features.2", "classifier"]
    result = model_randomisation(model, Gradient(), x, layers=["features.0", "classifier"], mode="independent")
    assert result.layers == ["classifier", "features.0"]
    with pytest.raises(ValueError, match="cannot randomise layers \\['features.1'\\]"):
        model_randomisation(model, Gradient(), x, layers=["features.1"])
    with pytest.raises(ValueError, match="mode must be"):
        model_randomisation(model, Gradient(), x, mode="bottom_up")
    with pytest.raises(ValueError, match="must return maps"):
        model_randomisation(model, lambda m, inputs, t: inputs, x)
