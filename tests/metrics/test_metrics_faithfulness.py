"""Insertion / deletion: analytic curves and AUCs per preset, canvases against literal references, batching."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from torch import nn

from xaiimg.metrics import PROTOCOLS, InsertionDeletionProtocol, insertion_deletion
from xaiimg.metrics.faithfulness import rise_kernel1d, zeros_canvas
from xaiimg.passes import count_passes


class RegionKeptModel(nn.Module):
    """softmax(logits)[0] = f, the fraction of ``region`` pixels still equal (all channels) to the original ``x0``."""

    def __init__(self, x0: torch.Tensor, region: torch.Tensor):
        super().__init__()
        self.register_buffer("x0", x0)
        self.register_buffer("region", region)

    def forward(self, x):
        kept = ((x - self.x0).abs() < 1e-12).all(dim=1)
        fraction = (kept & self.region).flatten(1).sum(1).double() / self.region.sum()
        return torch.stack([fraction.log(), (1 - fraction).log()], dim=1)


class MeanModel(nn.Module):
    """logits = [mean(x), 0]: softmax(logits)[0] = sigmoid(mean(x))."""

    def forward(self, x):
        mean = x.flatten(1).mean(1)
        return torch.stack([mean, torch.zeros_like(mean)], dim=1)


def noise_image(size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = 0.5 + 0.5 * torch.rand(1, 3, size, size, generator=generator, dtype=torch.float64)
    signs = torch.randint(0, 2, (1, 3, size, size), generator=generator) * 2 - 1
    return values * signs  # never 0, high-frequency: any blur changes every pixel


def test_preset_steps_at_224():
    assert [PROTOCOLS[name].pixels_per_step(224 * 224) for name in ("rise", "thesis", "groupcam")] == [224, 448, 448]
    assert PROTOCOLS["thesis"].pixels_per_step(112 * 112) == 112  # 0.893% of the pixels at any size


@pytest.mark.parametrize("protocol, step", [("rise", 224), ("thesis", 37), ("groupcam", 448)])
def test_region_model_analytic_auc(protocol, step):
    """A region of K = m*step pixels (scattered) and the map equal to it: point i = min(i/m, 1) for insertion, so
    insertion AUC = 1 - m/(2N) and deletion AUC = m/(2N) with N = ceil(H*W/step) (64x64 image)."""
    x0 = noise_image(64)
    m = 6
    region = torch.zeros(64 * 64, dtype=torch.bool)
    region[torch.randperm(64 * 64, generator=torch.Generator().manual_seed(5))[: m * step]] = True
    region = region.view(1, 64, 64)
    saliency = region.double().unsqueeze(1)
    result = insertion_deletion(RegionKeptModel(x0, region), x0, saliency, protocol=protocol, batch_size=128)
    num_steps = math.ceil(4096 / step)
    assert result.pixels_per_step == step
    assert result.insertion_curve.shape == (1, num_steps + 1)
    assert result.insertion_auc.item() == pytest.approx(1 - m / (2 * num_steps), abs=1e-12)
    assert result.deletion_auc.item() == pytest.approx(m / (2 * num_steps), abs=1e-12)
    assert result.overall.item() == pytest.approx(1 - m / num_steps, abs=1e-12)
    assert result.targets.tolist() == [0]


def test_partial_last_step_and_region_not_multiple_of_step():
    """Curve point i = min(i*step, K)/K with a partial last step; AUC = trapezoid on evenly spaced [0, 1]."""
    size, step, region_pixels = 20, 37, 150
    x0 = noise_image(size, seed=1)
    generator = torch.Generator().manual_seed(3)
    region = torch.zeros(size * size, dtype=torch.bool)
    region[torch.randperm(size * size, generator=generator)[:region_pixels]] = True
    region = region.view(1, size, size)
    jitter = torch.rand(1, 1, size, size, generator=generator, dtype=torch.float64)
    saliency = region.double().unsqueeze(1) + 0.01 * jitter
    protocol = InsertionDeletionProtocol("custom", insertion_canvas=zeros_canvas, deletion_canvas=zeros_canvas,
                                         step=step)
    result = insertion_deletion(RegionKeptModel(x0, region), x0, saliency, protocol=protocol)
    num_steps = math.ceil(size * size / step)  # 11, last step has 400 - 370 = 30 pixels
    expected = np.array([min(i * step, region_pixels) / region_pixels for i in range(num_steps + 1)])
    np.testing.assert_allclose(result.insertion_curve[0].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(result.deletion_curve[0].numpy(), 1 - expected, atol=1e-12)
    grid = np.linspace(0, 1, num_steps + 1)
    assert result.insertion_auc.item() == pytest.approx(np.trapezoid(expected, grid), abs=1e-12)
    assert result.fractions[-1].item() == 1.0 and result.fractions[1].item() == pytest.approx(step / 400)


def test_rise_kernel_is_erics_gkern():
    """eclique/RISE: gkern(11, 5) = scipy gaussian_filter of a centred delta (reflect mode)."""
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    reference = ndi.gaussian_filter(delta, 5)
    kernel = rise_kernel1d().numpy()
    np.testing.assert_allclose(np.outer(kernel, kernel), reference, atol=1e-15)


@pytest.mark.parametrize("protocol", ["rise", "thesis", "groupcam"])
def test_canvases_match_literal_references(protocol):
    """Insertion point 0 scores the insertion canvas, deletion point N the deletion canvas (MeanModel: sigmoid of
    the canvas mean); canvases recomputed with scipy as each paper's code defines them."""
    x = noise_image(40, seed=2) + 0.3
    saliency = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = insertion_deletion(MeanModel(), x, saliency, protocol=protocol)
    image = x[0].numpy()
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    rise_kernel = ndi.gaussian_filter(delta, 5)
    offsets = np.arange(51) - 25
    g = np.exp(-offsets**2 / (2 * 50.0**2))
    g /= g.sum()
    rise_blur = np.stack([ndi.correlate(c, rise_kernel, mode="constant", cval=0.0) for c in image])
    blur_51 = np.stack([ndi.correlate(c, np.outer(g, g), mode="mirror") for c in image])
    canvases = {"rise": (rise_blur, np.zeros_like(image)), "thesis": (blur_51, blur_51),
                "groupcam": (blur_51, np.zeros_like(image))}[protocol]

    def sigmoid(value):
        return 1 / (1 + math.exp(-value))

    assert result.targets.tolist() == [0]
    assert result.insertion_curve[0, 0].item() == pytest.approx(sigmoid(canvases[0].mean()), abs=1e-12)
    assert result.deletion_curve[0, -1].item() == pytest.approx(sigmoid(canvases[1].mean()), abs=1e-12)
    assert result.insertion_curve[0, -1].item() == pytest.approx(sigmoid(image.mean()), abs=1e-12)
    assert result.deletion_curve[0, 0].item() == pytest.approx(sigmoid(image.mean()), abs=1e-12)


def test_class_is_argmax_on_original_unless_given():
    x = -noise_image(16).abs()  # negative mean: MeanModel predicts class 1
    saliency = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    assert insertion_deletion(MeanModel(), x, saliency).targets.tolist() == [1]
    given = insertion_deletion(MeanModel(), x, saliency, target=0)
    assert given.targets.tolist() == [0]
    assert given.deletion_curve[0, 0].item() == pytest.approx(1 / (1 + math.exp(-x.mean().item())))


class PerSampleModel(nn.Module):
    """Runs the wrapped model one image at a time, so a sample's output cannot depend on its batch neighbours
    (BLAS may round a batched GEMM differently): equal curves then mean equal perturbed images and job order."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.cat([self.model(image[None]) for image in x])


def _tiny_inputs(tiny_cnn):
    model = tiny_cnn.double()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=generator, dtype=torch.float64)
    saliency = torch.rand(3, 1, 8, 8, generator=generator, dtype=torch.float64).round(decimals=1)  # many ties
    return model, x, saliency


@pytest.mark.parametrize("protocol", [
    InsertionDeletionProtocol("rise-like", PROTOCOLS["rise"].insertion_canvas, zeros_canvas, step=64),
    InsertionDeletionProtocol("thesis-like", PROTOCOLS["thesis"].insertion_canvas, PROTOCOLS["thesis"].deletion_canvas,
                              step=41)])
def test_batched_equals_unbatched_and_inputs_untouched(tiny_cnn, protocol):
    tiny, x, saliency = _tiny_inputs(tiny_cnn)
    model = PerSampleModel(tiny)
    x_before, saliency_before = x.clone(), saliency.clone()
    model.train()
    results = [insertion_deletion(model, x, saliency, protocol=protocol, batch_size=size) for size in (1, 5, 10_000)]
    for other in results[1:]:
        assert torch.equal(other.insertion_curve, results[0].insertion_curve)
        assert torch.equal(other.deletion_curve, results[0].deletion_curve)
    assert torch.equal(x, x_before) and torch.equal(saliency, saliency_before)
    assert model.training and all(p.grad is None for p in model.parameters())
    single = insertion_deletion(model, x[1:2], saliency[1:2], protocol=protocol)
    assert torch.equal(single.insertion_curve[0], results[0].insertion_curve[1])
    batched_model = insertion_deletion(tiny, x, saliency, protocol=protocol, batch_size=5)
    torch.testing.assert_close(batched_model.insertion_curve, results[0].insertion_curve, rtol=0, atol=1e-14)


def test_pass_count_and_chunk_sizes(tiny_cnn):
    model, x, saliency = _tiny_inputs(tiny_cnn)
    with count_passes(model) as log:
        result = insertion_deletion(model, x, saliency, protocol="groupcam", batch_size=2)
    num_steps = result.insertion_curve.shape[1] - 1
    assert num_steps == math.ceil(1024 / 448)
    assert log.images_forwarded == 3 * (2 * num_steps + 1)
    assert max(log.forward_batches) == 2 and log.backwards == 0


def test_results_table_and_directions(tiny_cnn, capsys):
    model, x, saliency = _tiny_inputs(tiny_cnn)
    result = insertion_deletion(model, x, saliency, progress=True)
    assert "insertion/deletion (rise)" in capsys.readouterr().err
    assert result.higher_is_better == {"insertion_auc": True, "deletion_auc": False, "overall": True}
    as_dict = result.to_dict()
    summary = as_dict["summary"]
    assert summary["overall"] == pytest.approx(summary["insertion_auc"] - summary["deletion_auc"])
    assert len(as_dict["insertion_curve"]) == 3 and as_dict["protocol"] == "rise"
    header, row = result.csv_header().split(","), result.csv_row().split(",")
    assert header == ["metric", "insertion_auc", "deletion_auc", "overall"]
    assert row[0] == "insertion_deletion" and float(row[1]) == pytest.approx(result.insertion_auc.mean().item())


def test_bad_inputs_raise_clear_errors(tiny_cnn):
    model, x, saliency = _tiny_inputs(tiny_cnn)
    with pytest.raises(ValueError, match="2 maps for a batch of 3"):
        insertion_deletion(model, x, saliency[:2])
    with pytest.raises(ValueError, match="unknown insertion/deletion protocol 'riss'"):
        insertion_deletion(model, x, saliency, protocol="riss")
    with pytest.raises(ValueError, match="out of range"):
        insertion_deletion(model, x, saliency, target=7)
    with pytest.raises(ValueError, match="NaN"):
        insertion_deletion(model, x, saliency * float("nan"))
    with pytest.raises(ValueError, match="batch_size"):
        insertion_deletion(model, x, saliency, batch_size=0)


def test_deletion_matches_quantus_pixel_flipping(tiny_cnn):
    """Quantus PixelFlipping (baseline 0 in input space, softmax) broadcasts the map over the 3 channels and flips
    ``features_in_step`` values of the flattened [3,H,W] array per step, so with 64 values per step its every third
    point removes the same 64 pixels as our deletion with step 64 (a tie-free map keeps both rankings equal)."""
    quantus = pytest.importorskip("quantus")
    model = tiny_cnn.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=generator)
    saliency = torch.rand(2, 1, 32, 32, generator=generator, dtype=torch.float64)
    protocol = InsertionDeletionProtocol("zeros-64", zeros_canvas, zeros_canvas, step=64)
    ours = insertion_deletion(model, x, saliency, protocol=protocol)
    metric = quantus.PixelFlipping(features_in_step=64, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True)
    curves = metric(model=model, x_batch=x.numpy(), y_batch=ours.targets.numpy(), a_batch=saliency.numpy(),
                    channel_first=True, softmax=True, device="cpu")
    np.testing.assert_allclose(ours.deletion_curve[:, 1:].numpy(), np.asarray(curves)[:, 2::3], atol=1e-6)
