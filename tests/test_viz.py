"""Plotting helpers: overlay values, grid layout, curve AUC labels, files written (PDF + PNG, reproducible),
figures released, and the top-k% saliency segment."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xaiimg import viz


def test_import_does_not_load_matplotlib():
    code = "import sys, xaiimg.viz; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_overlay_blends_image_and_colormap():
    image = torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(0))
    saliency = torch.zeros(1, 8, 10)
    saliency[0, :4] = 1.0
    np.testing.assert_allclose(viz.overlay(image, saliency, alpha=0.0), image.permute(1, 2, 0).numpy(), atol=1e-7)
    pure = viz.overlay(image, saliency, alpha=1.0, cmap="gray")
    assert pure.shape == (8, 10, 3)
    np.testing.assert_allclose(pure[:4], 1.0)  # gray colormap: 1 -> white, 0 -> black
    np.testing.assert_allclose(pure[4:], 0.0)
    half = viz.overlay(image.permute(1, 2, 0).numpy(), saliency[0].numpy(), alpha=0.25, cmap="gray")
    np.testing.assert_allclose(half, 0.75 * image.permute(1, 2, 0).numpy() + 0.25 * pure, atol=1e-7)
    with pytest.raises(ValueError, match="differ in size"):
        viz.overlay(image, torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(image, saliency, alpha=1.5)
    with pytest.raises(TypeError, match="uint8"):
        viz.overlay(np.zeros((8, 10, 3), dtype=np.uint8), saliency)


def test_method_grid_layout_and_no_pyplot_figures():
    images = torch.rand(2, 3, 12, 12)
    maps = {"grad-cam": torch.rand(2, 1, 12, 12), "msg-cam": torch.rand(2, 1, 12, 12),
            "lrp": torch.rand(2, 1, 12, 12)}
    figure = viz.method_grid(images, maps, titles=["Grad-CAM", "MSG-CAM", "LRP"], row_labels=["cat", "cup"])
    assert len(figure.axes) == 2 * 4
    assert [ax.get_title() for ax in figure.axes[:4]] == ["Image", "Grad-CAM", "MSG-CAM", "LRP"]
    assert figure.axes[4].get_ylabel() == "cup"
    np.testing.assert_allclose(figure.axes[5].images[0].get_array(),
                               viz.overlay(images[1], maps["grad-cam"][1]), atol=1e-7)
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    with pytest.raises(ValueError, match="has 1 maps for 2 images"):
        viz.method_grid(images, {"x": torch.rand(1, 1, 12, 12)})


def test_plot_curves_auc_labels_and_band():
    steps = np.linspace(0, 1, 11)
    figure = viz.plot_curves({"insertion": steps, "deletion": torch.ones(3, 11) * torch.tensor([[0.2], [0.4], [0.6]])},
                             title="chelsea")
    ax = figure.axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["insertion (AUC 0.500)", "deletion (AUC 0.400)"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), 0.4)
    assert len(ax.collections) == 1  # the +-1 std band of the 2-D curve
    with pytest.raises(ValueError, match="x has 5"):
        viz.plot_curves({"a": steps}, x=np.linspace(0, 1, 5))


def test_save_figure_writes_pdf_and_png_reproducibly_and_closes(tmp_path):
    from matplotlib import pyplot as plt

    figure = viz.plot_curves({"a": np.linspace(0, 1, 5)})
    first = viz.save_figure(figure, tmp_path / "sub" / "curves", dpi=50, close=False)
    assert [p.name for p in first] == ["curves.pdf", "curves.png"]
    assert first[0].read_bytes()[:5] == b"%PDF-"
    with Image.open(first[1]) as png:
        assert png.size == (200, 150)  # figsize 4 x 3 inches at 50 dpi
    assert figure.axes  # close=False keeps it
    # a rerun (a fresh, identical figure) writes byte-identical files: no dates in the metadata
    again = viz.save_figure(viz.plot_curves({"a": np.linspace(0, 1, 5)}), tmp_path / "again", dpi=50)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in first]
    viz.save_figure(figure, tmp_path / "third", dpi=50)
    assert figure.axes == []  # released

    managed = plt.figure()
    viz.save_figure(managed, tmp_path / "managed")
    assert not plt.fignum_exists(managed.number)
    with pytest.raises(ValueError, match="without extension"):
        viz.save_figure(viz.plot_curves({"a": [0, 1]}), tmp_path / "x.png")


def test_save_figure_shows_a_small_jpeg_inline_in_a_notebook_kernel(tmp_path, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    viz.save_figure(viz.plot_curves({"a": np.linspace(0, 1, 5)}), tmp_path / "script", dpi=50)
    assert shown == []  # outside a kernel (pytest), nothing is displayed by default
    viz.save_figure(viz.plot_curves({"a": np.linspace(0, 1, 5)}), tmp_path / "shown", dpi=50, show=True)
    (image,) = shown
    assert image.format == "jpeg" and image.data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(image.data)) as jpeg:
        assert jpeg.size == (4 * viz.INLINE_DPI, 3 * viz.INLINE_DPI)  # figsize 4 x 3 inches
    assert (tmp_path / "shown.png").is_file()  # the saved files are unchanged by showing

    class Kernel:  # what IPython.get_ipython() returns inside Jupyter: a shell with a kernel
        kernel = object()

    monkeypatch.setattr("IPython.get_ipython", lambda: Kernel())
    assert viz.in_notebook_kernel()
    viz.save_figure(viz.plot_curves({"a": [0, 1]}), tmp_path / "auto", dpi=50)
    assert len(shown) == 2
    viz.save_figure(viz.plot_curves({"a": [0, 1]}), tmp_path / "quiet", dpi=50, show=False)
    assert len(shown) == 2


def test_saliency_segment_keeps_exactly_top_k_percent():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 10, 10, generator=generator)
    saliency = torch.rand(2, 1, 10, 10, generator=generator)
    segments, masks = viz.saliency_segment(images, saliency, top_percent=15)
    assert masks.dtype == torch.bool and masks.shape == (2, 1, 10, 10)
    assert masks.sum(dim=(1, 2, 3)).tolist() == [15, 15]
    for b in range(2):
        threshold = saliency[b].flatten().sort(descending=True).values[14]
        assert torch.equal(masks[b], saliency[b] >= threshold)
    assert torch.equal(segments, images * masks)
    # ties: a flat map keeps the first k pixels in raster order; 12.5% of 100 pixels rounds to 12
    _, flat_masks = viz.saliency_segment(images[:1], torch.zeros(1, 1, 10, 10), top_percent=12.5, fill=0.5)
    assert flat_masks.flatten().nonzero().flatten().tolist() == list(range(12))
    filled, _ = viz.saliency_segment(images[:1], torch.zeros(1, 1, 10, 10), top_percent=12.5, fill=0.5)
    assert torch.all(filled[0, :, 9] == 0.5)
    with pytest.raises(ValueError, match="top_percent"):
        viz.saliency_segment(images, saliency, top_percent=0)
    with pytest.raises(ValueError, match="does not match"):
        viz.saliency_segment(images, saliency[:, :, :5], top_percent=10)


def test_committed_figures_stay_small():
    """The pipeline's figures are committed to git, so each stays under 1 MiB: save_figure's default 100 dpi, and
    80 dpi for the two figures with the most noise-textured panels (notebooks 01 and 05)."""
    figures = sorted((Path(__file__).resolve().parents[1] / "figures").glob("*.*"))
    assert figures, "figures/ holds the pipeline's committed outputs"
    too_large = {p.name: p.stat().st_size for p in figures if p.stat().st_size > 2**20}
    assert not too_large, f"figures over 1 MiB: {too_large}"
