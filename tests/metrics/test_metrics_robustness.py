"""Max-sensitivity: closed forms on constructed explainers, FGSM by hand, Quantus MaxSensitivity cross-check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaiimg.metrics import max_sensitivity
from xaiimg.metrics.robustness import fgsm, uniform_linf_noise


def first_channel(model, x, targets):
    """An explanation equal to the input's first channel: e(x+d) - e(x) = d[:, :1]."""
    return x[:, :1].clone()


def input_gradient(model, x, targets):
    with torch.enable_grad():
        inputs = x.clone().requires_grad_(True)
        logits = model(inputs)
        (gradient,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), inputs)
    return gradient.sum(dim=1, keepdim=True)


def linear_model() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(4, 108, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return model


def inputs(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_identity_explainer_ratio_is_noise_norm_over_map_norm():
    x = inputs()
    result = max_sensitivity(first_channel, linear_model(), x, radius=0.1, samples=7, seed=5, batch_size=3)
    noise = uniform_linf_noise(x.shape, 0.1, 7, torch.Generator().manual_seed(5), dtype=x.dtype)
    expected = (noise[:, :, :1].flatten(2).norm(dim=2) / x[:, :1].flatten(1).norm(dim=1)).T  # [B, samples]
    torch.testing.assert_close(result.sampled, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(result.max_sensitivity, expected.max(dim=1).values, rtol=0, atol=1e-14)
    assert noise.abs().max() <= 0.1 and noise.abs().max() > 0.09  # fills the L-inf ball
    assert result.higher_is_better["max_sensitivity"] is False


def test_gradient_of_linear_model_is_insensitive_and_batching_is_irrelevant():
    model, x = linear_model(), inputs(3)
    result = max_sensitivity(input_gradient, model, x, radius=0.5, samples=4)
    assert torch.all(result.sampled < 1e-12)
    a = max_sensitivity(first_channel, model, x, samples=5, seed=2, batch_size=1)
    b = max_sensitivity(first_channel, model, x, samples=5, seed=2, batch_size=100)
    c = max_sensitivity(first_channel, model, x, samples=5, seed=3)
    assert torch.equal(a.sampled, b.sampled) and not torch.equal(a.sampled, c.sampled)
    assert a.targets.tolist() == model(x).argmax(-1).tolist()


def test_fgsm_step_by_hand():
    """Linear logits W x + b: grad_x CE = W^T (softmax - onehot); FGSM = x + r * sign of it."""
    model, x = linear_model(), inputs(2)
    with torch.no_grad():
        model[1].weight.mul_(0.02)  # unsaturated softmax: no gradient entry rounds to 0
    targets = torch.tensor([1, 3])
    weight = model[1].weight.detach()
    probabilities = (x.flatten(1) @ weight.T + model[1].bias.detach()).softmax(-1)
    gradient = (probabilities - nn.functional.one_hot(targets, 4).double()) @ weight
    assert gradient.abs().min() > 1e-6
    expected = x + 0.05 * gradient.sign().view_as(x)
    torch.testing.assert_close(fgsm(model, x, targets, 0.05), expected, rtol=0, atol=1e-15)
    result = max_sensitivity(first_channel, model, x, target=[1, 3], radius=0.05, samples=2, attack="fgsm")
    expected_ratio = (0.05 * gradient.sign().view_as(x)[:, :1]).flatten(1).norm(dim=1) / x[:, :1].flatten(1).norm(dim=1)
    torch.testing.assert_close(result.fgsm_sensitivity, expected_ratio, rtol=0, atol=1e-14)
    assert all(p.grad is None for p in model.parameters())


def test_cross_check_quantus_max_sensitivity(tiny_cnn):
    """Quantus MaxSensitivity (difference, Frobenius norms, divided by ||e(x)||, no normalisation/abs) fed our
    noise draws through its perturb_func hook must give our values on a tiny CNN with the gradient explainer."""
    quantus = pytest.importorskip("quantus")
    model = tiny_cnn.double()
    x = inputs(2)
    samples, radius, seed = 5, 0.05, 7
    targets = model(x).argmax(-1)
    draws = iter(uniform_linf_noise(x.shape, radius, samples, torch.Generator().manual_seed(seed),
                                    dtype=x.dtype).numpy())

    def our_noise(arr, indices, **kwargs):
        return arr + next(draws).reshape(arr.shape)

    def explain_func(model, inputs, targets, **kwargs):
        return input_gradient(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    metric = quantus.MaxSensitivity(nr_samples=samples, perturb_func=our_noise, normalise=False, abs=False,
                                    disable_warnings=True)
    expected = metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=None, explain_func=explain_func,
                      channel_first=True, device="cpu")
    ours = max_sensitivity(input_gradient, model, x, radius=radius, samples=samples, seed=seed)
    np.testing.assert_allclose(ours.max_sensitivity.numpy(), np.asarray(expected), rtol=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="radius must be > 0"):
        max_sensitivity(first_channel, linear_model(), inputs(), radius=0)
    with pytest.raises(ValueError, match="attack must be"):
        max_sensitivity(first_channel, linear_model(), inputs(), attack="pgd")
    with pytest.raises(ValueError, match="must return maps"):
        max_sensitivity(lambda m, x, t: x, linear_model(), inputs())
