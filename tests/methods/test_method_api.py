"""The one-call API for the CAM and gradient methods: ``xaiimg.explain`` by name and by instance, the registry,
output shape/range, flat maps, and the model's state left as found."""
from __future__ import annotations

import pytest
import torch

import xaiimg as xi
from xaiimg.methods import available_methods, get_method, register
from xaiimg.methods.cam import GradCAM

OUR_METHODS = {"cam": {}, "grad-cam": {}, "grad-cam++": {}, "xgrad-cam": {}, "gradient": {},
               "smoothgrad": dict(n_samples=3), "integrated-gradients": dict(n_steps=3), "guided-backprop": {},
               "occlusion": dict(window=8, stride=4)}


def test_available_methods_lists_ours_sorted():
    names = available_methods()
    assert set(OUR_METHODS) <= set(names) and names == sorted(names)


def test_by_name_and_by_instance_agree(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for name, params in OUR_METHODS.items():
        by_name = xi.explain(name, tiny_cnn, x, target=[0, 3], **params)
        instance = get_method(name, **params)
        assert instance.name == name and type(instance) is type(get_method(name))
        torch.testing.assert_close(xi.explain(instance, tiny_cnn, x, target=[0, 3]), by_name, rtol=0, atol=0)
    assert xi.methods.GradCAM is GradCAM


def test_registry_errors(tiny_cnn):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"unknown method 'grad-cam\+'; did you mean \['grad-cam\+\+'"):
        xi.explain("grad-cam+", tiny_cnn, x)
    with pytest.raises(TypeError, match="constructor"):
        xi.explain(GradCAM(), tiny_cnn, x, layer="features.3")
    with pytest.raises(TypeError, match="registered name or an Explainer"):
        xi.explain(GradCAM, tiny_cnn, x)
    with pytest.raises(TypeError, match="unexpected keyword"):
        xi.explain("grad-cam", tiny_cnn, x, n_samples=3)
    with pytest.raises(ValueError, match="already registered to GradCAM"):
        register("grad-cam")(type("Other", (GradCAM,), {}))


@pytest.mark.parametrize("name", list(OUR_METHODS))
def test_output_shape_range_and_state_restored(name, tiny_cnn):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x_before = x.clone()
    tiny_cnn.train()
    params = list(tiny_cnn.parameters())
    params[2].requires_grad_(False)
    grad = torch.full_like(params[0], 0.5)
    params[0].grad = grad
    maps = xi.explain(name, tiny_cnn, x, **OUR_METHODS[name])
    assert maps.shape == (3, 1, 16, 16) and maps.dtype == x.dtype
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert torch.equal(maps.amax(dim=(1, 2, 3)), torch.ones(3))     # min-max per sample
    assert all(m.training for m in tiny_cnn.modules())
    assert [p.requires_grad for p in params] == [True, True, False] + [True] * (len(params) - 3)
    assert params[0].grad is grad and torch.equal(grad, torch.full_like(grad, 0.5))
    assert all(p.grad is None for p in params[1:])
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


@pytest.mark.parametrize("name", list(OUR_METHODS))
def test_flat_map_becomes_zeros_not_nan(name, tiny_cnn):
    """Zero classifier weights: every logit is its bias, all gradients and occlusion drops vanish."""
    with torch.no_grad():
        tiny_cnn.classifier.weight.zero_()
    maps = xi.explain(name, tiny_cnn, torch.randn(2, 3, 16, 16), target=1, **OUR_METHODS[name])
    assert torch.equal(maps, torch.zeros(2, 1, 16, 16))


def test_normalize_false_returns_raw_maps_at_input_size(tiny_cnn):
    x = torch.randn(1, 3, 16, 16)
    raw = xi.explain("grad-cam", tiny_cnn, x, target=2, normalize=False)
    assert raw.shape == (1, 1, 16, 16) and raw.min() >= 0
    torch.testing.assert_close(xi.explain("grad-cam", tiny_cnn, x, target=2),
                               (raw - raw.min()) / (raw.max() - raw.min()))
