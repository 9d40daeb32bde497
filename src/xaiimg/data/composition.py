"""Synthetic composition benchmark: images whose aesthetic score is a known function of the scene.

Each image is a textured subject (disk, square, triangle or diamond) on a textured background. The score is

    score = 1 + 9 * (w_p * placement + w_d * depth_of_field + w_c * contrast)        in [1, 10]

- ``placement = exp(-d^2 / (2 w^2))``, ``d`` = distance (in image widths) from the subject's centre to the
  nearest rule-of-thirds point, ``w = thirds_width``;
- ``depth_of_field = background_blur * (1 - subject_blur)`` (both in [0,1] of their maximum Gaussian sigma):
  a sharp subject on a blurred background scores highest;
- ``contrast = min(|subject luminance - background luminance| / contrast_range, 1)`` (lighting contrast).

Each image comes with its subject mask and a 10-bin vote distribution, a discretised Gaussian around the score
(``p_i ∝ exp(-(i - score)^2 / (2 vote_sd^2))``, ``i = 1..10``). Everything is drawn from one seeded
``torch.Generator``, so a ``(n, config, seed)`` triple always gives the same images.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from xaiimg.ops import gaussian_blur

SHAPES = ("disk", "square", "triangle", "diamond")
THIRDS = ((1 / 3, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1 / 3), (2 / 3, 2 / 3))


@dataclass(frozen=True)
class CompositionConfig:
    """Generator settings. Blur sigmas are in pixels at ``size=224`` and scale with ``size``."""

    size: int = 224
    radius_range: tuple[float, float] = (0.09, 0.16)       # subject radius, fraction of the image side
    thirds_fraction: float = 0.5                           # share of subjects placed near a thirds point
    thirds_jitter: float = 0.06                            # sd of that placement, fraction of the side
    thirds_width: float = 0.08
    max_background_blur: float = 6.0
    max_subject_blur: float = 3.0
    luminance_range: tuple[float, float] = (0.15, 0.85)
    contrast_range: float = 0.6
    weights: tuple[float, float, float] = (0.4, 0.35, 0.25)  # placement, depth of field, contrast
    vote_sd: float = 1.0

    def __post_init__(self):
        if self.size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {self.size}")
        if not math.isclose(sum(self.weights), 1.0) or min(self.weights) < 0:
            raise ValueError(f"weights must be non-negative and sum to 1, got {self.weights}")
        if self.vote_sd <= 0:
            raise ValueError(f"vote_sd must be positive, got {self.vote_sd}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scene:
    """One image's scene. Positions and radius are fractions of the image side; blurs are in [0,1]."""

    shape: str
    centre: tuple[float, float]            # (row, column)
    radius: float
    background_blur: float
    subject_blur: float
    subject_luminance: float
    background_luminance: float
    subject_tint: tuple[float, float, float]
    background_tint: tuple[float, float, float]
    texture_period: float                  # subject stripes, fraction of the side
    texture_angle: float


def scene_terms(scene: Scene, config: CompositionConfig) -> dict[str, float]:
    """The three score terms of ``scene``, each in [0,1]."""
    distance = min(math.dist(scene.centre, point) for point in THIRDS)
    return {"placement": math.exp(-distance**2 / (2 * config.thirds_width**2)),
            "depth_of_field": scene.background_blur * (1 - scene.subject_blur),
            "contrast": min(abs(scene.subject_luminance - scene.background_luminance) / config.contrast_range, 1.0)}


def scene_score(scene: Scene, config: CompositionConfig) -> float:
    """``1 + 9 * sum_k w_k term_k``."""
    terms = scene_terms(scene, config)
    return 1 + 9 * sum(w * terms[k] for w, k in zip(config.weights, ("placement", "depth_of_field", "contrast")))


def gaussian_votes(scores: torch.Tensor, sd: float = 1.0) -> torch.Tensor:
    """Discretised Gaussian over the bins 1..10 around each score: ``[N] -> [N,10]``, rows summing to 1."""
    bins = torch.arange(1, 11, dtype=torch.float64)
    logits = -(bins - scores.double().view(-1, 1)) ** 2 / (2 * sd**2)
    return logits.softmax(-1).float()


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def sample_scene(generator: torch.Generator, config: CompositionConfig) -> Scene:
    radius = _uniform(generator, *config.radius_range)
    if _uniform(generator) < config.thirds_fraction:
        point = THIRDS[int(torch.randint(4, (), generator=generator))]
        jitter = torch.randn(2, generator=generator, dtype=torch.float64) * config.thirds_jitter
        centre = tuple(min(max(p + float(j), radius), 1 - radius) for p, j in zip(point, jitter))
    else:
        centre = (_uniform(generator, radius, 1 - radius), _uniform(generator, radius, 1 - radius))
    return Scene(
        shape=SHAPES[int(torch.randint(len(SHAPES), (), generator=generator))], centre=centre, radius=radius,
        background_blur=_uniform(generator), subject_blur=_uniform(generator),
        subject_luminance=_uniform(generator, *config.luminance_range),
        background_luminance=_uniform(generator, *config.luminance_range),
        subject_tint=tuple(_uniform(generator, -0.3, 0.3) for _ in range(3)),
        background_tint=tuple(_uniform(generator, -0.3, 0.3) for _ in range(3)),
        texture_period=_uniform(generator, 0.03, 0.06), texture_angle=_uniform(generator, 0, math.pi))


def shape_mask(shape: str, centre: tuple[float, float], radius: float, size: int) -> torch.Tensor:
    """Boolean ``[size,size]`` mask of a shape centred at ``centre`` (fractions of the side); pixel centres
    at ``(k + 0.5) / size``."""
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    dy, dx = (coords - centre[0]).view(-1, 1), (coords - centre[1]).view(1, -1)
    if shape == "disk":
        return dy**2 + dx**2 <= radius**2
    if shape == "square":
        side = radius / math.sqrt(2) * 1.25
        return (dy.abs() <= side) & (dx.abs() <= side)
    if shape == "diamond":
        return dy.abs() + dx.abs() <= radius
    if shape == "triangle":  # equilateral, apex down: base (side r*sqrt(3)) at row centre - r, apex at centre + r/2
        half_width = (radius / 2 - dy) / math.sqrt(3)
        return (dy >= -radius) & (dy <= radius / 2) & (dx.abs() <= half_width)
    raise ValueError(f"unknown shape {shape!r}; available: {SHAPES}")


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.3:
        return image
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (image.shape[-1] // 2) - 1)
    return gaussian_blur(image, kernel, sigma, border="reflect")


def _coloured(luminance: float, tint: tuple[float, float, float], pattern: torch.Tensor) -> torch.Tensor:
    colour = torch.tensor(tint, dtype=torch.float32).view(3, 1, 1)
    return (luminance + pattern) * (1 + colour - colour.mean())


def render_scene(scene: Scene, config: CompositionConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image [3,H,W] in [0,1], subject mask [1,H,W] bool)``. The background carries coarse and fine noise
    (the fine part is what background blur removes); the subject carries oriented stripes."""
    size, scale = config.size, config.size / 224
    coarse = F.interpolate(torch.randn(1, 1, 6, 6, generator=generator), size=(size, size), mode="bicubic",
                           align_corners=False)[0, 0] * 0.08
    fine = torch.randn(size, size, generator=generator) * 0.12
    background = _coloured(scene.background_luminance, scene.background_tint, coarse + fine)
    background = _blur(background[None], scene.background_blur * config.max_background_blur * scale)[0]

    coords = torch.arange(size, dtype=torch.float32) / size
    along = coords.view(-1, 1) * math.sin(scene.texture_angle) + coords.view(1, -1) * math.cos(scene.texture_angle)
    stripes = 0.12 * torch.sign(torch.sin(2 * math.pi * along / scene.texture_period))
    subject = _coloured(scene.subject_luminance, scene.subject_tint, stripes)
    mask = shape_mask(scene.shape, scene.centre, scene.radius, size)
    alpha = mask.float()[None]
    sigma = scene.subject_blur * config.max_subject_blur * scale
    subject, alpha = _blur((subject * alpha)[None], sigma)[0], _blur(alpha[None], sigma)[0]
    image = subject + (1 - alpha) * background  # subject premultiplied by its (blurred) alpha
    return image.clamp(0, 1), mask[None]


@dataclass
class CompositionSet:
    """``images [N,3,H,W]`` in [0,1], ``masks [N,1,H,W]`` bool, ``scores [N]``, ``distributions [N,10]``,
    ``terms`` (per-image score terms) and the ``scenes`` that generated them."""

    images: torch.Tensor
    masks: torch.Tensor
    scores: torch.Tensor
    distributions: torch.Tensor
    terms: list[dict[str, float]]
    scenes: list[Scene]
    config: CompositionConfig
    seed: int

    def __len__(self) -> int:
        return len(self.scenes)

    def dataset(self, spec=None) -> TensorDataset:
        """``(image, distribution)`` pairs; images normalised with ``spec.from_unit_range`` given a ModelSpec."""
        images = self.images if spec is None else spec.from_unit_range(self.images)
        return TensorDataset(images, self.distributions)


def make_composition_set(n: int, config: CompositionConfig | None = None, seed: int = 0) -> CompositionSet:
    """``n`` seeded scenes, rendered."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    config = config or CompositionConfig()
    generator = torch.Generator().manual_seed(seed)
    scenes = [sample_scene(generator, config) for _ in range(n)]
    rendered = [render_scene(scene, config, generator) for scene in scenes]
    scores = torch.tensor([scene_score(scene, config) for scene in scenes], dtype=torch.float32)
    return CompositionSet(images=torch.stack([image for image, _ in rendered]),
                          masks=torch.stack([mask for _, mask in rendered]), scores=scores,
                          distributions=gaussian_votes(scores, config.vote_sd),
                          terms=[scene_terms(scene, config) for scene in scenes], scenes=scenes, config=config,
                          seed=seed)
