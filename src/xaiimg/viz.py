"""Figures: saliency overlays, method-comparison grids, insertion/deletion curves, and saving as PDF + PNG.

matplotlib is imported inside the functions (``import xaiimg`` stays light), and figures are built with
:class:`matplotlib.figure.Figure` directly, not pyplot: nothing is registered in pyplot's global figure list, so
a loop over hundreds of images leaks no figures. A returned Figure shows in Jupyter as a cell's last value.
Images are ``[3,H,W]`` tensors or ``HxWx3`` arrays in [0,1]; maps ``[1,H,W]``/``[H,W]`` (tensors or arrays).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _numpy(values) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)


def _image_array(image) -> np.ndarray:
    """``HxWx3`` float array in [0,1] from a ``[3,H,W]`` tensor or an ``HxWx3`` array."""
    array = _numpy(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image must be [3,H,W] or HxWx3, got shape {array.shape}")
    if array.dtype == np.uint8:
        raise TypeError("image must be floats in [0,1], got uint8; divide by 255 (or use model.spec.to_unit_range)")
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def _map_array(saliency) -> np.ndarray:
    array = np.squeeze(_numpy(saliency))
    if array.ndim != 2:
        raise ValueError(f"saliency must be [1,H,W] or [H,W], got shape {np.shape(saliency)}")
    return array.astype(np.float64)


def overlay(image01, saliency, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``(1 - alpha) * image + alpha * cmap(saliency)``: ``HxWx3`` float array in [0,1].

    ``saliency`` must have the image's height and width and values in [0,1] (``xaiimg.explain`` output);
    values outside are clipped.
    """
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0,1], got {alpha}")
    image, heat = _image_array(image01), _map_array(saliency)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"saliency {heat.shape} and image {image.shape[:2]} differ in size; upsample the map "
                         "(xaiimg.ops.upsample) first")
    colored = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3]
    return (1.0 - alpha) * image + alpha * colored


def method_grid(images, maps_by_method: Mapping[str, Sequence], titles: Sequence[str] | None = None,
                row_labels: Sequence[str] | None = None, show_image: bool = True, alpha: float = 0.5,
                cmap: str = "jet", cell_size: float = 1.8, colorbar: bool = False):
    """Comparison grid as in the thesis's figures: one row per image, one column per method (overlays).

    Args:
        images: ``[B,3,H,W]`` tensor or sequence of images in [0,1].
        maps_by_method: method name -> ``[B,1,H,W]`` maps (or a sequence of B maps), in column order.
        titles: column titles for the methods (default: the dict keys).
        row_labels: one label per image (e.g. class names), written left of each row.
        show_image: add a first column with the plain image.
        colorbar: add one colourbar (saliency 0..1 in ``cmap``) beside the grid.
    """
    from matplotlib.figure import Figure

    images = list(images)
    columns = {name: list(maps) for name, maps in maps_by_method.items()}
    if not images or not columns:
        raise ValueError("method_grid needs at least one image and one method")
    for name, maps in columns.items():
        if len(maps) != len(images):
            raise ValueError(f"method {name!r} has {len(maps)} maps for {len(images)} images")
    titles = list(titles) if titles is not None else list(columns)
    if len(titles) != len(columns):
        raise ValueError(f"got {len(titles)} titles for {len(columns)} methods")
    if row_labels is not None and len(row_labels) != len(images):
        raise ValueError(f"got {len(row_labels)} row labels for {len(images)} images")
    headers = (["Image"] if show_image else []) + titles
    figure = Figure(figsize=(cell_size * len(headers), cell_size * len(images)), layout="constrained")
    axes = figure.subplots(len(images), len(headers), squeeze=False)
    for row, image in enumerate(images):
        cells = ([_image_array(image)] if show_image else []) + [
            overlay(image, maps[row], alpha=alpha, cmap=cmap) for maps in columns.values()]
        for col, cell in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(headers[col], fontsize=9)
        if row_labels is not None:
            axes[row, 0].set_ylabel(row_labels[row], fontsize=8)
    if colorbar:
        from matplotlib import colormaps
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormaps[cmap]), ax=axes, shrink=0.8)
        bar.set_label("saliency", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return figure


def plot_curves(curves: Mapping[str, object], x=None, xlabel: str = "fraction of pixels",
                ylabel: str = "class probability", title: str | None = None, show_auc: bool = True,
                ax=None):
    """Insertion/deletion (or any) curves, one line per entry; returns the Figure.

    A curve is a 1-D array of ``N+1`` points, or ``[n, N+1]`` (n samples: the mean is drawn with a band of one
    standard deviation). ``x`` defaults to ``linspace(0, 1, N+1)``. With ``show_auc`` the legend gives the
    trapezoidal area under the (mean) curve over ``x``, which on the uniform grid equals RISE's
    ``(sum - a0/2 - aN/2) / N``.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    if ax is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4.0, 3.0), layout="constrained")
        ax = figure.subplots()
    else:
        figure = ax.figure
    for name, values in curves.items():
        values = _numpy(values).astype(np.float64)
        if values.ndim not in (1, 2):
            raise ValueError(f"curve {name!r} must be [N+1] or [n, N+1], got shape {values.shape}")
        mean = values if values.ndim == 1 else values.mean(axis=0)
        grid = np.linspace(0.0, 1.0, mean.shape[-1]) if x is None else _numpy(x).astype(np.float64)
        if grid.shape != mean.shape:
            raise ValueError(f"curve {name!r} has {mean.shape[-1]} points, x has {grid.shape[-1]}")
        label = f"{name} (AUC {np.trapezoid(mean, grid):.3f})" if show_auc else name
        (line,) = ax.plot(grid, mean, label=label)
        if values.ndim == 2 and values.shape[0] > 1:
            spread = values.std(axis=0)
            ax.fill_between(grid, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return figure


INLINE_DPI = 60          # figures shown inside a notebook: small enough that an executed notebook stays under 1 MiB
INLINE_JPEG_QUALITY = 85


def in_notebook_kernel() -> bool:
    """Whether this code runs inside a Jupyter kernel (an IPython shell with a kernel), not a script or a terminal."""
    import sys

    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def show_inline(fig, dpi: int = INLINE_DPI) -> bytes:
    """Display ``fig`` in the running notebook as a JPEG at ``dpi``; returns the JPEG's bytes."""
    import io

    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=dpi, pil_kwargs={"quality": INLINE_JPEG_QUALITY})
    display(Image(data=buffer.getvalue(), format="jpeg"))
    return buffer.getvalue()


def save_figure(fig, path_stem: str | Path, dpi: int = 100, formats: Sequence[str] = ("pdf", "png"),
                close: bool = True, show: bool | None = None) -> list[Path]:
    """Write ``<path_stem>.pdf`` (vector) and ``<path_stem>.png`` (``dpi``), creating folders; returns the paths.

    ``dpi`` also sets the resolution of image panels inside the PDF (matplotlib resamples ``imshow`` output to it).
    The default 100 keeps a 2-inch panel of a 224-pixel input near its native resolution; the repository commits
    the pipeline's figures, and figures with many noise-textured panels pass a lower ``dpi`` to stay under 1 MiB.

    No creation date is written, so rerunning a pipeline stage gives byte-identical files (DVC sees no change).
    ``close`` releases the figure (and removes it from pyplot's list if pyplot made it). ``show`` (default: when
    running in a Jupyter kernel) also displays it inline with :func:`show_inline`, so an executed notebook shows
    every figure it writes, at a resolution git can hold.
    """
    import sys

    if dpi <= 0:
        raise ValueError(f"dpi must be positive, got {dpi}")
    stem = Path(path_stem)
    if stem.suffix.lower() in (".pdf", ".png", ".svg"):
        raise ValueError(f"give the path without extension (got {stem}); formats={tuple(formats)} are added")
    stem.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"pdf": {"CreationDate": None, "Producer": None}, "png": {"Software": None},
                "svg": {"Date": None}}
    paths = []
    for fmt in formats:
        if fmt not in metadata:
            raise ValueError(f"unsupported format {fmt!r}; use pdf, png or svg")
        path = stem.parent / f"{stem.name}.{fmt}"
        fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata[fmt])
        paths.append(path)
    if in_notebook_kernel() if show is None else show:
        show_inline(fig)
    if close:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(fig)
        fig.clear()
    return paths


def saliency_segment(image01, saliency, top_percent: float, fill: float = 0.0):
    """Keep the ``top_percent`` % most salient pixels of each image, set the others to ``fill``.

    ``k = round(H * W * top_percent / 100)`` pixels per image (at least 1), ranked by a stable descending sort
    (ties keep raster order, PROTOCOLS.md), so exactly ``k`` pixels are kept even on flat maps.
    ``image01``: ``[B,C,H,W]`` tensor in [0,1]; ``saliency``: ``[B,1,H,W]``. Returns ``(segments, masks)``:
    ``[B,C,H,W]`` and a boolean ``[B,1,H,W]``.
    """
    import torch

    from xaiimg.ops import stable_descending_order

    if not isinstance(image01, torch.Tensor) or not isinstance(saliency, torch.Tensor):
        raise TypeError("saliency_segment expects torch tensors [B,C,H,W] and [B,1,H,W]")
    if image01.ndim != 4 or saliency.ndim != 4 or saliency.shape[1] != 1:
        raise ValueError(f"expected image [B,C,H,W] and saliency [B,1,H,W], got {tuple(image01.shape)} "
                         f"and {tuple(saliency.shape)}")
    if saliency.shape[0] != image01.shape[0] or saliency.shape[-2:] != image01.shape[-2:]:
        raise ValueError(f"saliency {tuple(saliency.shape)} does not match image {tuple(image01.shape)}")
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
    batch, pixels = saliency.shape[0], saliency.shape[-2] * saliency.shape[-1]
    keep = max(1, int(round(pixels * top_percent / 100)))
    order = stable_descending_order(saliency)[:, :keep]
    masks = torch.zeros(batch, pixels, dtype=torch.bool, device=saliency.device)
    masks.scatter_(1, order, True)
    masks = masks.view(batch, 1, *saliency.shape[-2:])
    segments = torch.where(masks, image01, torch.full_like(image01, fill))
    return segments, masks


__all__ = ["method_grid", "overlay", "plot_curves", "save_figure", "saliency_segment"]
