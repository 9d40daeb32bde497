"""What each layer of a CNN responds to: the aesthetic paper's claim 1 (its Figs. 5-6): shallow layers respond to
texture and colour, deep layers to contours and shape and separate the subject from the background.

**The measure** (:func:`layer_response`). For an image ``i``, a layer with activations ``A_c`` (``c`` = channel) on
an ``h x w`` grid and a property with component maps ``P_k`` (:func:`property_maps`, area-averaged to the same
grid), ``rho_i(c, k)`` is Spearman's rank correlation of ``A_c`` and ``P_k`` over the ``h*w`` positions (0 when
either map is constant: nothing to rank). The layer's association with the property on image ``i`` is

    a_i = mean over the k_top pairs (c, k) with the largest |m_-i(c, k)| of sign(m_-i(c, k)) * rho_i(c, k),
    m_-i(c, k) = mean over the other images j != i of rho_j(c, k),

i.e. the units are chosen on the other images and scored on the held-out one. This follows network dissection
(Bau et al., "Network Dissection", CVPR 2017), which assigns a concept to a unit from its agreement over a whole
data set, with a rank correlation in place of the IoU of a thresholded unit because our properties (colour,
texture energy) are continuous maps, not segmentations. The held-out choice matters: the plain
``max_c |rho_i(c, k)|`` grows with the number of channels and shrinks with the number of positions (on Lite0's
1280-channel 7x7 map pure noise reaches ~0.45, on its 32-channel 112x112 stem ~0.03), which would manufacture the
very depth trend under test; ``a_i`` has expectation 0 for units unrelated to the property at every depth
(``tests/test_layer_response.py`` checks both). The ``chance`` level is the same statistic with each image's
activations paired with the property maps of the next image (a cyclic derangement): it keeps what all images
share (central subjects, padding at the border) and removes what is specific to the image; ``specific = a_i -
chance_i`` is what the claims test.

**Properties** (:data:`PROPERTIES`; images in [0, 1], luminance ``L = 0.299 R + 0.587 G + 0.114 B``):
``colour``: the two opponent channels ``R - G`` and ``(R + G)/2 - B`` (two components); ``saturation``: HSV
saturation ``(max - min)/max``; ``texture``: the energy ``(L - G_1 * L)^2`` of the detail below 1 px (``G_s``: a
Gaussian of sigma ``s`` px); ``edges``: the Sobel magnitude of ``G_3 * L``, contours at the scale of object
boundaries with the finer texture removed; ``subject``: the figure/ground mask (scenes only). Each is averaged
over the input pixels of a grid cell (``adaptive_avg_pool2d``), so a property means the same thing at every depth
and only its resolution follows the layer.

**The claim** (:func:`layer_claims`): per image, ``specific`` at the deep layer minus at the shallow layer, mean and
95% bootstrap interval over images (:mod:`xaiimg.stats`): below 0 for colour/saturation/texture (averaged), above 0
for edges and for the subject mask.

**Deconvnet figure** (:func:`top_activation_projections`, :func:`projection_figure`): Zeiler & Fergus (ECCV 2014,
Fig. 2) style: for a channel, its 9 strongest activations over a set of images (one per image), each projected back
alone by the deconvnet (:class:`~xaiimg.methods.deconvnet.DeconvProjection`) and shown as the crop of the input
around the unit beside the crop of its projection, contrast-normalised per patch.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.methods.deconvnet import DeconvProjection
from xaiimg.nn import capture_outputs, forward_to, preserved_state, resolve_layer
from xaiimg.ops import average_ranks, check_images, gaussian_blur, upsample
from xaiimg.stats import bootstrap_mean
from xaiimg.studies.reproduction import Claim, measured_claim

PROPERTIES = ("colour", "saturation", "texture", "edges", "subject")
LOW_LEVEL = ("colour", "saturation", "texture")       # the paper's "texture and colour"
# EfficientNet-Lite0, input to output: the stem, the seven stages' outputs (strides 2, 4, 8, 16, 16, 32, 32) and the
# 1280-channel map after conv_head that the classifier (and the aesthetic model's attention) reads.
DEFAULT_STAGES = {"stem": "bn1", "block 0": "blocks.0", "shallow": "blocks.1", "block 2": "blocks.2",
                  "middle": "blocks.3", "block 4": "blocks.4", "block 5": "blocks.5", "block 6": "blocks.6",
                  "deep": "bn2"}
TEXTURE_SIGMA = 1.0
EDGE_SIGMA = 3.0
LUMINANCE = (0.299, 0.587, 0.114)


# ------------------------------------------------------------------------------------------------ properties
def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian_blur(image, 2 * round(3 * sigma) + 1, sigma, border="reflect")


def _sobel_magnitude(image: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=image.dtype)
    padded = F.pad(image, (1, 1, 1, 1), mode="reflect")
    gx = F.conv2d(padded, kernel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, kernel.t().reshape(1, 1, 3, 3))
    return (gx.pow(2) + gy.pow(2)).sqrt()


def property_maps(images01: torch.Tensor, size: tuple[int, int], masks: torch.Tensor | None = None,
                  properties: Sequence[str] = PROPERTIES[:-1]) -> dict[str, torch.Tensor]:
    """Each property's component maps ``[B, K, h, w]`` at grid ``size`` (module docstring): computed at the input
    resolution from ``images01`` (``[B, 3, H, W]`` in [0, 1]), then averaged over each cell. ``"subject"`` needs
    ``masks`` (``[B, 1, H, W]``, bool or in [0, 1])."""
    return _pooled(_full_resolution_properties(images01, masks, properties), size)


def _pooled(maps: Mapping[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    return {name: F.adaptive_avg_pool2d(values, size) for name, values in maps.items()}


def _full_resolution_properties(images01: torch.Tensor, masks: torch.Tensor | None,
                                properties: Sequence[str]) -> dict[str, torch.Tensor]:
    check_images(images01, name="images01")
    unknown = [name for name in properties if name not in PROPERTIES]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; available: {PROPERTIES}")
    if "subject" in properties:
        if masks is None:
            raise ValueError("the 'subject' property needs masks [B,1,H,W]; photographs without masks cannot have it")
        if masks.shape != (images01.shape[0], 1, *images01.shape[-2:]):
            raise ValueError(f"masks must have shape {(images01.shape[0], 1, *images01.shape[-2:])}, "
                             f"got {tuple(masks.shape)}")
    smallest = 2 * round(3 * EDGE_SIGMA) // 2 + 1
    if min(images01.shape[-2:]) < smallest:
        raise ValueError(f"images must be at least {smallest} pixels on each side for the edge blur (sigma "
                         f"{EDGE_SIGMA:g}), got {tuple(images01.shape[-2:])}")
    images01 = images01.double()
    red, green, blue = images01.unbind(1)
    luminance = sum(weight * channel for weight, channel in zip(LUMINANCE, images01.unbind(1))).unsqueeze(1)
    brightest, darkest = images01.amax(1, keepdim=True), images01.amin(1, keepdim=True)
    full = {
        "colour": lambda: torch.stack([red - green, (red + green) / 2 - blue], dim=1),
        "saturation": lambda: torch.where(brightest > 0, (brightest - darkest) / brightest.clamp_min(1e-12), 0.0),
        "texture": lambda: (luminance - _blur(luminance, TEXTURE_SIGMA)).pow(2),
        "edges": lambda: _sobel_magnitude(_blur(luminance, EDGE_SIGMA)),
        "subject": lambda: masks.double(),
    }
    return {name: full[name]() for name in properties}


# ---------------------------------------------------------------------------------------------- the measure
def _standardised_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``[B, N, h, w] -> [B, N, h*w]``: average ranks, centred, unit norm (zero for a constant map), so the dot
    product of two rows is Spearman's rho."""
    ranks = average_ranks(maps.flatten(2))
    ranks = ranks - ranks.mean(-1, keepdim=True)
    norm = ranks.norm(dim=-1, keepdim=True)
    return torch.where(norm > 1e-9, ranks / norm.clamp_min(1e-9), 0.0)


def rank_correlations(activations: torch.Tensor, properties: torch.Tensor) -> torch.Tensor:
    """``rho[b, c, k]``: Spearman correlation of channel ``c`` of ``activations [B, C, h, w]`` with component ``k``
    of ``properties [B, K, h, w]`` over the positions; 0 where either map is constant."""
    if activations.ndim != 4 or properties.ndim != 4 or activations.shape[0] != properties.shape[0] \
            or activations.shape[-2:] != properties.shape[-2:]:
        raise ValueError(f"need [B,C,h,w] activations and [B,K,h,w] properties on the same grid, got "
                         f"{tuple(activations.shape)} and {tuple(properties.shape)}")
    return _rank_products(_standardised_ranks(activations), _standardised_ranks(properties))


def _rank_products(activation_ranks: torch.Tensor, property_ranks: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bcp,bkp->bck", activation_ranks, property_ranks).double()


def held_out_association(correlations: torch.Tensor, top_units: int) -> torch.Tensor:
    """``a[i]`` (module docstring): the mean signed correlation on image ``i`` of the ``top_units`` (channel,
    component) pairs most consistently correlated on the other images. ``correlations``: ``[n, C, K]``, n >= 2."""
    if correlations.ndim != 3 or correlations.shape[0] < 2:
        raise ValueError(f"need correlations [n, C, K] of n >= 2 images (units are chosen on the others), got "
                         f"{tuple(correlations.shape)}")
    if top_units < 1:
        raise ValueError(f"top_units must be >= 1, got {top_units}")
    flat = correlations.flatten(1)
    others = (flat.sum(0, keepdim=True) - flat) / (flat.shape[0] - 1)
    chosen = others.abs().topk(min(top_units, flat.shape[1]), dim=1).indices
    return (others.gather(1, chosen).sign() * flat.gather(1, chosen)).mean(1)


@dataclass
class LayerResponse:
    """Per-image associations: ``matched[stage][property]`` and ``chance[stage][property]`` are ``[n]`` (module
    docstring); ``specific = matched - chance``. ``layers``: stage -> layer name; ``grids``: stage -> ``(h, w)``;
    ``unit_correlations[stage][property]``: ``[C, K]`` mean over images of ``rho`` (which units follow a property)."""

    matched: dict[str, dict[str, torch.Tensor]]
    chance: dict[str, dict[str, torch.Tensor]]
    layers: dict[str, str]
    grids: dict[str, tuple[int, int]]
    unit_correlations: dict[str, dict[str, torch.Tensor]]
    top_units: int

    @property
    def n(self) -> int:
        return len(next(iter(next(iter(self.matched.values())).values())))

    @property
    def properties(self) -> list[str]:
        return list(next(iter(self.matched.values())))

    def specific(self, stage: str, prop: str) -> torch.Tensor:
        return self.matched[stage][prop] - self.chance[stage][prop]

    def low_level(self, stage: str) -> torch.Tensor:
        """Per image, the mean of ``specific`` over colour, saturation and texture."""
        return torch.stack([self.specific(stage, prop) for prop in LOW_LEVEL]).mean(0)


def layer_response(model: nn.Module, x: torch.Tensor, images01: torch.Tensor, masks: torch.Tensor | None = None,
                   stages: Mapping[str, str] | None = None, top_units: int = 5,
                   batch_size: int = 16) -> LayerResponse:
    """The per-image associations of each stage's layer with each property (module docstring).

    ``x``: the model's input ``[n, 3, H, W]``; ``images01``: the same images in [0, 1] (for the properties);
    ``masks``: ``[n, 1, H, W]`` subject masks, adding the ``"subject"`` property. ``stages``: name -> layer
    (default :data:`DEFAULT_STAGES`). One forward pass per batch of ``batch_size`` images; the model's state is left
    as found.
    """
    check_images(x)
    if images01.shape != x.shape:
        raise ValueError(f"images01 must be x in [0, 1] with the same shape {tuple(x.shape)}, "
                         f"got {tuple(images01.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 images (units are chosen on the other images), got {x.shape[0]}")
    stages = dict(DEFAULT_STAGES if stages is None else stages)
    modules = [resolve_layer(model, layer) for layer in stages.values()]
    properties = PROPERTIES if masks is not None else PROPERTIES[:-1]
    activations: dict[str, list[torch.Tensor]] = {stage: [] for stage in stages}
    grids: dict[str, tuple[int, int]] = {}
    with preserved_state(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            with capture_outputs(modules) as outputs:
                model(x[start:start + batch_size])
            for stage, output in zip(stages, outputs):
                if output.ndim != 4:
                    raise ValueError(f"stage {stage!r} ({stages[stage]}) outputs shape {tuple(output.shape)}; "
                                     "need a spatial [B,C,h,w] layer")
                grids[stage] = tuple(output.shape[-2:])
                activations[stage].append(_standardised_ranks(output.float()).float())
    full_resolution = _full_resolution_properties(images01, masks, properties)
    matched, chance, correlations = {}, {}, {}
    for stage, outputs in activations.items():
        ranks = torch.cat(outputs)
        maps = _pooled(full_resolution, grids[stage])
        matched[stage], chance[stage], correlations[stage] = {}, {}, {}
        for prop, values in maps.items():
            prop_ranks = _standardised_ranks(values).float()
            same = _rank_products(ranks, prop_ranks)
            other = _rank_products(ranks, prop_ranks.roll(-1, dims=0))
            matched[stage][prop] = held_out_association(same, top_units)
            chance[stage][prop] = held_out_association(other, top_units)
            correlations[stage][prop] = same.mean(0)
    return LayerResponse(matched, chance, stages, grids, correlations, top_units)


# ------------------------------------------------------------------------------------------- table, claims
def response_table(responses: Mapping[str, LayerResponse], seed: int = 0) -> list[dict]:
    """One row per data set, stage and property: the matched, chance and specific association (mean over images)
    with the 95% bootstrap interval of ``specific``."""
    rows = []
    for dataset, response in responses.items():
        for stage, layer in response.layers.items():
            for prop in response.properties:
                specific = bootstrap_mean(response.specific(stage, prop), seed=seed)
                rows.append({"data": dataset, "stage": stage, "layer": layer,
                             "grid": "x".join(map(str, response.grids[stage])), "property": prop, "n": response.n,
                             "matched": round(float(response.matched[stage][prop].mean()), 3),
                             "chance": round(float(response.chance[stage][prop].mean()), 3),
                             **{key: value for key, value in specific.as_row().items() if key != "n"}})
    return rows


def response_profile_figure(rows: Sequence[Mapping]):
    """Per data set, the specific association of each property along the layers (rows of :func:`response_table`):
    the mean over images with its 95% bootstrap interval."""
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(row["data"] for row in rows))
    figure = Figure(figsize=(5.2 * len(datasets), 3.4), layout="constrained")
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    for axis, dataset in zip(axes, datasets):
        selected = [row for row in rows if row["data"] == dataset]
        stages = list(dict.fromkeys(row["stage"] for row in selected))
        for prop in dict.fromkeys(row["property"] for row in selected):
            line = [next(row for row in selected if row["stage"] == stage and row["property"] == prop)
                    for stage in stages]
            mean = [row["mean"] for row in line]
            axis.plot(range(len(stages)), mean, marker="o", markersize=3, label=prop)
            axis.fill_between(range(len(stages)), [row["ci_low"] for row in line], [row["ci_high"] for row in line],
                              alpha=0.2, linewidth=0)
        grids = {row["stage"]: row["grid"] for row in selected}
        axis.set_xticks(range(len(stages)), [f"{stage}\n{grids[stage]}" for stage in stages], fontsize=6,
                        rotation=45)
        axis.axhline(0, color="grey", linewidth=0.5)
        axis.set_ylabel("association beyond chance")
        axis.set_title(f"{dataset} (n={selected[0]['n']})", fontsize=9)
        axis.legend(fontsize=6)
    return figure


def following_units(response: LayerResponse, stage: str, prop: str, count: int = 1,
                    exclude: Sequence[int] = ()) -> list[int]:
    """The ``count`` channels of ``stage`` (other than ``exclude``) with the highest mean correlation (over images,
    best component) with ``prop``: the units that follow the property, e.g. to show in :func:`projection_figure`."""
    order = response.unit_correlations[stage][prop].amax(1).argsort(descending=True, stable=True).tolist()
    return [channel for channel in order if channel not in set(exclude)][:count]


def depth_differences(response: LayerResponse, shallow: str = "shallow", deep: str = "deep") -> dict[str, np.ndarray]:
    """Per image, ``specific`` at ``deep`` minus at ``shallow`` for each property and for the low-level mean."""
    for stage in (shallow, deep):
        if stage not in response.layers:
            raise ValueError(f"stage {stage!r} not measured; stages: {list(response.layers)}")
    values = {prop: (response.specific(deep, prop) - response.specific(shallow, prop)).numpy()
              for prop in response.properties}
    values["low-level"] = (response.low_level(deep) - response.low_level(shallow)).numpy()
    return values


def layer_claims(photos: LayerResponse, scenes: LayerResponse, model: str, photo_data: str, scene_data: str,
                 shallow: str = "shallow", deep: str = "deep", seed: int = 0) -> list[Claim]:
    """Claim 1 of the aesthetic paper as three measured claims (paired deep - shallow differences of ``specific``
    over images): colour/saturation/texture lower at depth (photos), edges higher at depth (photos), the subject
    mask higher at depth (scenes with known masks)."""
    if "subject" not in scenes.properties:
        raise ValueError("the scene response has no 'subject' property: measure it with masks")
    layers = f"{deep} ({photos.layers[deep]}) - {shallow} ({photos.layers[shallow]})"
    photo_diff, scene_diff = depth_differences(photos, shallow, deep), depth_differences(scenes, shallow, deep)
    measure = f"per image, held-out unit association beyond chance (Spearman, top {photos.top_units} units), "

    def details(differences: dict[str, np.ndarray]) -> dict:
        return {prop: bootstrap_mean(diff, seed=seed).as_row() for prop, diff in differences.items()}

    def peak(response: LayerResponse, props: Sequence[str]) -> str:
        means = {stage: float(torch.stack([response.specific(stage, prop) for prop in props]).mean())
                 for stage in response.layers}
        best = max(means, key=means.get)
        at_deep = "" if best == deep else f"; at {deep}: {means[deep]:.2f}"
        return f"Highest at {best} ({response.layers[best]}): {means[best]:.2f}{at_deep}."

    common = {"paper": "aesthetic", "model": model}
    return [
        measured_claim("aesthetic/layers-colour-texture", where="Fig. 5", statement="Shallow layers respond to "
                       "texture and colour more than deep layers", paper_value="qualitative (feature maps)",
                       measure=measure + f"mean of colour, saturation, texture; {layers}", data=photo_data,
                       estimate=bootstrap_mean(photo_diff["low-level"], seed=seed), direction="less",
                       note=peak(photos, LOW_LEVEL), details=details(photo_diff), **common),
        measured_claim("aesthetic/layers-contours", where="Figs. 5-6", statement="Deep layers respond to contours "
                       "and shape more than shallow layers", paper_value="qualitative (feature maps)",
                       measure=measure + f"edges (Sobel of the sigma-{EDGE_SIGMA:g} smoothed luminance); {layers}",
                       data=photo_data, estimate=bootstrap_mean(photo_diff["edges"], seed=seed),
                       direction="greater", note=peak(photos, ["edges"]), details=details(photo_diff), **common),
        measured_claim("aesthetic/layers-subject", where="Fig. 6", statement="Deep layers separate the subject "
                       "from the background more than shallow layers", paper_value="qualitative (feature maps)",
                       measure=measure + f"subject mask; {layers}", data=scene_data,
                       estimate=bootstrap_mean(scene_diff["subject"], seed=seed), direction="greater",
                       note=peak(scenes, ["subject"]), details=details(scene_diff), **common),
    ]


# ------------------------------------------------------------------------------------ deconvnet projections
@dataclass
class ChannelProjections:
    """One channel's strongest activations over a set of images: ``images`` (indices into the set), ``positions``
    (``(row, col)`` on the layer's grid), ``values``; ``image_crops``: ``[k, 3, s, s]`` crops of the input (in
    [0, 1]) around each unit, ``s`` = ``crop``; ``projection_crops[rule]``: the same crops of each unit's projection
    by that rule (``"deconvnet"``, ``"guided"``: :class:`~xaiimg.methods.deconvnet.DeconvProjection`)."""

    layer: str
    channel: int
    images: list[int]
    positions: list[tuple[int, int]]
    values: list[float]
    image_crops: torch.Tensor
    projection_crops: dict[str, torch.Tensor]
    crop: int


def _mass_square(projection: torch.Tensor, centre: tuple[float, float], mass: float) -> int:
    """Side of the smallest square centred at ``centre`` holding ``mass`` of ``sum_c |projection|``."""
    energy = projection.abs().sum(0)
    rows = torch.arange(energy.shape[0], dtype=torch.float64).view(-1, 1) + 0.5
    cols = torch.arange(energy.shape[1], dtype=torch.float64).view(1, -1) + 0.5
    distance = torch.maximum((rows - centre[0]).abs(), (cols - centre[1]).abs()).flatten()
    order = distance.argsort(stable=True)
    cumulative = energy.flatten().double()[order].cumsum(0)
    inside = int(torch.searchsorted(cumulative, mass * cumulative[-1]))
    return int(2 * distance[order][min(inside, order.numel() - 1)].ceil())


def _crop(image: torch.Tensor, centre: tuple[float, float], side: int) -> torch.Tensor:
    """``[C, side, side]`` window centred at ``centre``, shifted to lie inside the image."""
    height, width = image.shape[-2:]
    top = min(max(int(round(centre[0] - side / 2)), 0), height - side)
    left = min(max(int(round(centre[1] - side / 2)), 0), width - side)
    return image[:, top:top + side, left:left + side]


def top_activation_projections(model: nn.Module, x: torch.Tensor, images01: torch.Tensor, layer: str,
                               channels: Sequence[int], top: int = 9, rules: Sequence[str] = ("deconvnet", "guided"),
                               mass: float = 0.9, min_crop: int = 16) -> list[ChannelProjections]:
    """Zeiler & Fergus (2014, Fig. 2), per channel of ``layer``: the ``top`` images whose strongest activation of
    the channel is highest (one unit per image, at its argmax), each unit projected back alone by each of
    ``rules``: ``"deconvnet"`` (Z&F) and ``"guided"`` (Springenberg et al. 2015; on a network without max-pooling
    the deconvnet's projection does not depend on the image, :mod:`xaiimg.methods.deconvnet`).

    The crop side (one per channel) is the median over the ``top`` units of the smallest square around the unit's
    centre that holds ``mass`` of the absolute value of its last rule's projection (the effective receptive field;
    Luo et al., NeurIPS 2016), at least ``min_crop`` pixels and at most the image. Projections are returned as
    computed; :func:`projection_figure` normalises each crop for display. One forward pass to the layer, then one
    forward-backward per channel and rule on its ``top`` images.
    """
    check_images(x)
    if images01.shape != x.shape:
        raise ValueError(f"images01 must be x in [0, 1] with the same shape {tuple(x.shape)}")
    if not 0 < mass <= 1 or top < 1 or not rules:
        raise ValueError(f"need 0 < mass <= 1, top >= 1 and a rule, got mass={mass}, top={top}, rules={rules}")
    module = resolve_layer(model, layer)
    with preserved_state(model), torch.no_grad():
        activation = forward_to(model, x, module)
    bad = [channel for channel in channels if not 0 <= channel < activation.shape[1]]
    if bad:
        raise ValueError(f"channels {bad} out of range for {layer} with {activation.shape[1]} channels")
    grid = activation.shape[-2:]
    stride = (x.shape[-2] / grid[0], x.shape[-1] / grid[1])
    results = []
    for channel in channels:
        strongest = activation[:, channel].flatten(1).max(1)
        chosen = strongest.values.argsort(descending=True, stable=True)[:top]
        projections = {rule: DeconvProjection(layer=layer, channel=channel, rule=rule).project(model, x[chosen])
                       for rule in rules}
        positions = [divmod(int(strongest.indices[i]), grid[1]) for i in chosen]
        centres = [((row + 0.5) * stride[0], (col + 0.5) * stride[1]) for row, col in positions]
        sides = [_mass_square(projection, centre, mass) for projection, centre in zip(projections[rules[-1]], centres)]
        side = int(min(max(int(np.median(sides)), min_crop), *x.shape[-2:]))
        results.append(ChannelProjections(
            layer=layer, channel=channel, images=chosen.tolist(), positions=positions,
            values=[float(strongest.values[i]) for i in chosen],
            image_crops=torch.stack([_crop(images01[i], centre, side)
                                     for i, centre in zip(chosen.tolist(), centres)]),
            projection_crops={rule: torch.stack([_crop(p, centre, side) for p, centre in zip(values, centres)])
                              for rule, values in projections.items()},
            crop=side))
    return results


def contrast_normalised(projection: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """A projection crop ``[3, s, s]`` for display: ``0.5 + 0.5 * clip(p / q, -1, 1)`` with ``q`` the
    ``percentile`` of ``|p|`` in the crop (grey = no signal; the sign and colour of the projection are kept)."""
    scale = torch.quantile(projection.abs().flatten().double(), percentile / 100).float()
    if scale <= 0:
        return torch.full_like(projection, 0.5)
    return 0.5 + 0.5 * (projection / scale).clamp(-1, 1)


def _mosaic(tiles: torch.Tensor, tile: int, columns: int = 3) -> np.ndarray:
    """``[k, 3, s, s]`` -> an image of ``columns`` tiles per row, each resized to ``tile`` px, 2-px white gaps."""
    resized = upsample(tiles.float(), (tile, tile)).clamp(0, 1)
    rows = -(-len(resized) // columns)
    canvas = torch.ones(3, rows * (tile + 2) - 2, columns * (tile + 2) - 2)
    for index, picture in enumerate(resized):
        row, col = divmod(index, columns)
        canvas[:, row * (tile + 2):row * (tile + 2) + tile, col * (tile + 2):col * (tile + 2) + tile] = picture
    return canvas.permute(1, 2, 0).numpy()


def projection_figure(projections: Mapping[str, Sequence[ChannelProjections]], labels: Mapping[str, Sequence[str]]
                      | None = None, tile: int = 40, images: int | None = None):
    """One row per stage; per channel, the mosaic of input crops, then one mosaic per projection rule (each crop
    contrast-normalised on its own, :func:`contrast_normalised`). ``labels[stage][j]``: a caption for channel ``j``
    (e.g. the property it follows); ``images``: the size of the set the units were drawn from, for the titles."""
    from matplotlib.figure import Figure

    channels_per_row = max(len(channels) for channels in projections.values())
    rules = list(next(iter(projections.values()))[0].projection_crops)
    panels = 1 + len(rules)
    figure = Figure(figsize=(1.75 * panels * channels_per_row, 1.95 * len(projections)), layout="constrained")
    axes = figure.subplots(len(projections), panels * channels_per_row, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for row, (stage, channels) in enumerate(projections.items()):
        for col, result in enumerate(channels):
            label = f"{labels[stage][col]}: " if labels else ""
            first = axes[row, panels * col]
            first.imshow(_mosaic(result.image_crops, tile))
            shown = f"top {len(result.images)}" + (f"/{images}" if images else "")
            first.set_title(f"{stage} ({result.layer}) {label}\nchannel {result.channel}, {shown}, {result.crop} px",
                            fontsize=6)
            for offset, rule in enumerate(rules, start=1):
                normalised = torch.stack([contrast_normalised(p) for p in result.projection_crops[rule]])
                axes[row, panels * col + offset].imshow(_mosaic(normalised, tile))
                axes[row, panels * col + offset].set_title(rule, fontsize=6)
    return figure
