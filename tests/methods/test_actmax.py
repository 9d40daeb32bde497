"""Activation maximisation (Simonyan et al. 2014): closed form on a linear model, determinism, ascent, state."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaiimg.methods.actmax import activation_maximisation


def linear_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double().eval()
    return model


def test_linear_model_matches_closed_form():
    """S(I) = w.I + b: I_{k+1} = I_k + lr (w - 2 l2 I_k) = a I_k + lr w with a = 1 - 2 lr l2, so
    I_n = a^n I_0 + lr w (1 - a^n) / (1 - a); objective = w.I + b - l2 |I|^2."""
    model = linear_model()
    lr, l2, steps = 0.3, 0.05, 7
    result = activation_maximisation(model, target=[2, 0], steps=steps, lr=lr, l2=l2, seed=3, size=4, init_std=0.5)
    initial = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.5
    weights = model[1].weight.detach()[[2, 0]].view(2, 3, 4, 4)
    a = 1 - 2 * lr * l2
    expected = a ** steps * initial + lr * weights * (1 - a ** steps) / (1 - a)
    torch.testing.assert_close(result.image, expected)
    assert result.history.shape == (steps + 1, 2)
    bias = model[1].bias.detach()[[2, 0]]
    final = (weights * expected).flatten(1).sum(1) + bias - l2 * expected.pow(2).flatten(1).sum(1)
    torch.testing.assert_close(result.history[-1], final)
    first = (weights * initial).flatten(1).sum(1) + bias - l2 * initial.pow(2).flatten(1).sum(1)
    torch.testing.assert_close(result.history[0], first)


def test_deterministic_under_seed_and_objective_increases(tiny_cnn):
    kwargs = dict(target=[1, 3], steps=15, lr=0.05, l2=1e-2)
    first = activation_maximisation(tiny_cnn, seed=7, **kwargs)
    again = activation_maximisation(tiny_cnn, seed=7, **kwargs)
    other = activation_maximisation(tiny_cnn, seed=8, **kwargs)
    assert torch.equal(first.image, again.image) and torch.equal(first.history, again.history)
    assert not torch.allclose(first.image, other.image)
    assert first.image.shape == (2, 3, 16, 16)
    assert (first.history[-1] > first.history[0] + 0.1).all()
    with torch.no_grad():
        logits = tiny_cnn(first.image)
    recomputed = logits[torch.arange(2), torch.tensor([1, 3])] - 1e-2 * first.image.pow(2).flatten(1).sum(1)
    torch.testing.assert_close(first.history[-1], recomputed)


def test_unit_objective_is_channel_mean_and_increases(tiny_cnn):
    # channels 1 and 5 of features.3 are alive near the zero image (2 and 4 are dead there: zero gradient)
    result = activation_maximisation(tiny_cnn, unit=[1, 5], layer="features.3", steps=10, lr=0.05, l2=0.0, seed=1)
    with torch.no_grad():
        activation = tiny_cnn.features(result.image)
    torch.testing.assert_close(result.history[-1], activation[[0, 1], [1, 5]].mean(dim=(1, 2)))
    assert (result.history[-1] > result.history[0]).all()


def test_model_state_untouched(tiny_cnn):
    tiny_cnn.train()
    frozen = tiny_cnn.features[0].weight
    frozen.requires_grad_(False)
    sentinel = torch.ones_like(tiny_cnn.classifier.weight)
    tiny_cnn.classifier.weight.grad = sentinel
    before = [p.detach().clone() for p in tiny_cnn.parameters()]
    activation_maximisation(tiny_cnn, target=0, steps=3, lr=0.1, seed=0)
    assert tiny_cnn.training and tiny_cnn.features.training
    assert not frozen.requires_grad and tiny_cnn.classifier.weight.requires_grad
    assert tiny_cnn.classifier.weight.grad is sentinel and tiny_cnn.classifier.bias.grad is None
    assert all(torch.equal(b, p) for b, p in zip(before, tiny_cnn.parameters()))
    assert all(not m._forward_hooks for m in tiny_cnn.modules())


def test_bad_inputs(tiny_cnn):
    with pytest.raises(ValueError, match="exactly one of target"):
        activation_maximisation(tiny_cnn, target=0, unit=1, layer="features.3")
    with pytest.raises(ValueError, match="exactly one of target"):
        activation_maximisation(tiny_cnn)
    with pytest.raises(ValueError, match=r"target class index \[7\] out of range"):
        activation_maximisation(tiny_cnn, target=7, steps=1)
    with pytest.raises(ValueError, match=r"unit index \[6\] out of range for 6 outputs"):
        activation_maximisation(tiny_cnn, unit=6, layer="features.3", steps=1)
    with pytest.raises(ValueError, match="pass size"):
        activation_maximisation(linear_model(), target=0, steps=1)
    with pytest.raises(TypeError, match="target must be an int"):
        activation_maximisation(tiny_cnn, target=[1.5])
    assert all(p.grad is None and p.requires_grad for p in tiny_cnn.parameters())


# ------------------------------------------------------------------------------ regularisers (Yosinski, Olah)
def zero_model(size=8):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 2)).double().eval()
    with torch.no_grad():
        model[1].weight.zero_()
    return model


def initial_image(batch, size, seed=1, std=1.0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * std


def test_decay_shrinks_the_image_geometrically_without_a_score_gradient():
    result = activation_maximisation(zero_model(), target=[0, 1], steps=5, l2=0.0, decay=0.1, seed=1, size=8,
                                     init_std=1.0)
    torch.testing.assert_close(result.image, initial_image(2, 8) * 0.9 ** 5, rtol=0, atol=1e-12)


def test_blur_every_step_equals_repeated_gaussian_blur():
    from xaiimg.ops import gaussian_blur

    result = activation_maximisation(zero_model(), target=0, steps=2, l2=0.0, blur_every=1, blur_sigma=1.0, seed=1,
                                     size=8, init_std=1.0)
    expected = gaussian_blur(gaussian_blur(initial_image(1, 8), 7, 1.0), 7, 1.0)
    torch.testing.assert_close(result.image, expected, rtol=0, atol=1e-12)
    every_other = activation_maximisation(zero_model(), target=0, steps=2, l2=0.0, blur_every=2, blur_sigma=1.0,
                                          seed=1, size=8, init_std=1.0)
    torch.testing.assert_close(every_other.image, gaussian_blur(initial_image(1, 8), 7, 1.0), rtol=0, atol=1e-12)


def test_jitter_changes_nothing_for_a_translation_invariant_score_and_is_seeded():
    """S = c * sum(I) has the same gradient at every pixel, so rolling the image cannot change the ascent; for a
    linear score with spatially varying weights it does, deterministically for a seed."""
    invariant = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1)).double().eval()
    with torch.no_grad():
        invariant[1].weight.fill_(0.25)
    plain = activation_maximisation(invariant, target=0, steps=4, lr=0.5, size=8, seed=2)
    jittered = activation_maximisation(invariant, target=0, steps=4, lr=0.5, size=8, seed=2, jitter=3)
    torch.testing.assert_close(jittered.image, plain.image, rtol=0, atol=1e-12)
    model = linear_model()
    once = activation_maximisation(model, target=1, steps=4, size=4, seed=2, jitter=2)
    assert torch.equal(once.image, activation_maximisation(model, target=1, steps=4, size=4, seed=2, jitter=2).image)
    assert not torch.allclose(once.image, activation_maximisation(model, target=1, steps=4, size=4, seed=2).image)


def test_octaves_grow_the_image_to_full_size(tiny_cnn):
    result = activation_maximisation(tiny_cnn, target=[1, 3], steps=3, lr=0.1, octaves=(0.5, 1.0), seed=0)
    assert result.image.shape == (2, 3, 16, 16) and result.history.shape == (2 * 3 + 1, 2)
    again = activation_maximisation(tiny_cnn, target=[1, 3], steps=3, lr=0.1, octaves=(0.5, 1.0), seed=0)
    assert torch.equal(result.image, again.image)


@pytest.mark.parametrize("kwargs,message", [(dict(decay=1.0), "decay"), (dict(blur_every=-1), "blur_every"),
                                            (dict(jitter=-2), "jitter"), (dict(octaves=(1.0, 0.5)), "octaves"),
                                            (dict(octaves=(0.5,)), "octaves")])
def test_bad_regulariser_settings(tiny_cnn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        activation_maximisation(tiny_cnn, target=0, steps=1, **kwargs)
