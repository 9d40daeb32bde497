"""Planted-evidence aesthetic benchmark: a subject on a real-photo or texture background, scored by a known rule.

Each scene is a subject (disk, square, triangle or diamond, striped in two colours) pasted with a hard mask onto a
background: a random crop of a real photograph (the pip-shipped samples, :func:`xaiimg.data.sample_images`, and the
20 ImageNet images of the foolbox wheel, :func:`xaiimg.data.foolbox_imagenet_samples`), flipped, colour-jittered,
re-exposed and blurred, or a procedural texture (band-limited noise, sums of gratings). Every scene has its subject
mask. Two score rules (``PlantedConfig.rule``) on the same renderer:

- ``"subject"`` (the planted-evidence variant): the score is a function of the subject's own properties only,

      score = 1 + 9 * (w_s * sharpness + w_e * exposure + w_h * harmony)                    in [1, 10]

  ``sharpness = 1 - subject_blur`` (blur in [0,1] of its maximum Gaussian sigma, applied to the subject's texture);
  ``exposure = 1 - |L - 0.5| / 0.35`` (``L`` the subject's mean luminance, best at mid-grey, clipped to [0,1]);
  ``harmony = 1 - 2 * hue_spread`` (the two stripe colours' hue distance as a fraction of the hue circle: analogous
  colours score 1, complementary ones 0; a planted rule, not a claim about human taste). The background's source,
  crop, colour, exposure and blur, and the subject's position, shape and size, are drawn independently of the score,
  and the background's pixels outside the mask are never touched by the subject: **every pixel that carries score
  information lies inside the mask**. A correct model must read the subject, so "the explanation's mass concentrates
  on the subject" (subject-mass share, energy-based pointing) is a test it can pass or fail: paper 000's claims 2
  and 3 are testable here.
- ``"composition"``: the rules of :mod:`xaiimg.data.composition` (placement near a rule-of-thirds point, depth of
  field = background blur x subject sharpness, subject/background luminance contrast). A correct model must look at
  the background (its blur and luminance are 35% and part of 25% of the score) and at where the subject lies, so
  subject-mass share cannot test "attention concentrates on the subject" there; it tests whether a model learns
  scene-level composition, as the original benchmark did.

Scenes are frozen parameter records (:class:`PlantedScene` = :class:`Subject` + :class:`Background`); rendering
is a deterministic function of the record and the photo pool, so swapping the background of a scene
(``dataclasses.replace(scene, background=...)``) changes no pixel inside the mask and, under the subject rule, not
the score. Everything is drawn from one seeded ``torch.Generator``.
"""
from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from xaiimg.data.composition import SHAPES, THIRDS, gaussian_votes, shape_mask
from xaiimg.ops import gaussian_blur

RULES = ("subject", "composition")
TEXTURES = ("noise", "waves")
SUBJECT_TERMS = ("sharpness", "exposure", "harmony")
COMPOSITION_TERMS = ("placement", "depth_of_field", "contrast")
LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601 luminance weights
EXPOSURE_CENTRE, EXPOSURE_HALF_RANGE = 0.5, 0.35


@dataclass(frozen=True)
class PlantedConfig:
    """Generator settings. The subject's maximum blur sigma is a fraction of its stripe period (so a fully blurred
    subject has lost its stripes at any period); the background's is in pixels at ``size=224`` and scales with
    ``size``; other fractions are of the image side. ``weights`` are the subject rule's (sharpness, exposure,
    harmony); ``composition_weights`` the composition rule's (placement, depth of field, contrast), as in
    :class:`~xaiimg.data.composition.CompositionConfig`."""

    size: int = 128
    rule: str = "subject"
    radius_range: tuple[float, float] = (0.17, 0.27)
    max_subject_blur: float = 0.35           # sigma at blur 1, fraction of the stripe period
    max_background_blur: float = 4.0
    luminance_range: tuple[float, float] = (0.15, 0.85)
    saturation: float = 0.65
    stripe_contrast: float = 0.35
    period_range: tuple[float, float] = (0.07, 0.12)
    texture_fraction: float = 0.3            # share of procedural-texture backgrounds (the rest: photo crops)
    crop_range: tuple[float, float] = (0.35, 1.0)  # crop side, fraction of the photo's shorter side
    weights: tuple[float, float, float] = (0.4, 0.35, 0.25)
    thirds_fraction: float = 0.5             # composition rule: share of subjects placed near a thirds point
    thirds_jitter: float = 0.06
    thirds_width: float = 0.08
    contrast_range: float = 0.6
    composition_weights: tuple[float, float, float] = (0.4, 0.35, 0.25)
    vote_sd: float = 1.0

    def __post_init__(self):
        if self.size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {self.size}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        for name in ("weights", "composition_weights"):
            weights = getattr(self, name)
            if len(weights) != 3 or not math.isclose(sum(weights), 1.0) or min(weights) < 0:
                raise ValueError(f"{name} must be three non-negative numbers summing to 1, got {weights}")
        if not 0 <= self.texture_fraction <= 1:
            raise ValueError(f"texture_fraction must be in [0, 1], got {self.texture_fraction}")
        if not 0 < self.radius_range[0] <= self.radius_range[1] < 0.5:
            raise ValueError(f"radius_range must lie in (0, 0.5), got {self.radius_range}")
        if self.vote_sd <= 0:
            raise ValueError(f"vote_sd must be positive, got {self.vote_sd}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PlantedConfig:
        """Inverse of :meth:`as_dict` after a JSON round trip (lists back to tuples)."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


@dataclass(frozen=True)
class Subject:
    """The subject: geometry (fractions of the side), texture blur in [0,1], mean luminance, hue and hue spread
    (fractions of the hue circle), stripe period and angle."""

    shape: str
    centre: tuple[float, float]          # (row, column)
    radius: float
    blur: float
    luminance: float
    hue: float
    hue_spread: float
    period: float
    angle: float


@dataclass(frozen=True)
class Background:
    """The background: ``source`` ``"photo"`` (photo ``index`` of the pool, square crop of side ``crop_side`` at
    ``crop_offset``, both fractions) or a texture name of :data:`TEXTURES` (drawn from ``texture_seed``); then
    ``flip``, hue rotation ``hue_shift`` (fraction of the circle), ``saturation`` factor, mean luminance
    ``luminance`` and blur in [0,1]."""

    source: str
    index: int
    crop_side: float
    crop_offset: tuple[float, float]
    flip: bool
    texture_seed: int
    hue_shift: float
    saturation: float
    luminance: float
    blur: float


@dataclass(frozen=True)
class PlantedScene:
    subject: Subject
    background: Background


def scene_terms(scene: PlantedScene, config: PlantedConfig) -> dict[str, float]:
    """The score terms of ``scene`` under ``config.rule``, each in [0,1]."""
    subject, background = scene.subject, scene.background
    if config.rule == "subject":
        return {"sharpness": 1 - subject.blur,
                "exposure": min(max(1 - abs(subject.luminance - EXPOSURE_CENTRE) / EXPOSURE_HALF_RANGE, 0.0), 1.0),
                "harmony": 1 - 2 * subject.hue_spread}
    distance = min(math.dist(subject.centre, point) for point in THIRDS)
    return {"placement": math.exp(-distance**2 / (2 * config.thirds_width**2)),
            "depth_of_field": background.blur * (1 - subject.blur),
            "contrast": min(abs(subject.luminance - background.luminance) / config.contrast_range, 1.0)}


def scene_score(scene: PlantedScene, config: PlantedConfig) -> float:
    """``1 + 9 * sum_k w_k term_k`` with the weights of ``config.rule``."""
    terms = scene_terms(scene, config)
    if config.rule == "subject":
        weights, names = config.weights, SUBJECT_TERMS
    else:
        weights, names = config.composition_weights, COMPOSITION_TERMS
    return 1 + 9 * sum(w * terms[name] for w, name in zip(weights, names))


# ------------------------------------------------------------------------------------------- sampling
def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _choice(generator: torch.Generator, count: int) -> int:
    return int(torch.randint(count, (), generator=generator))


def sample_subject(generator: torch.Generator, config: PlantedConfig) -> Subject:
    """A subject; placed uniformly (subject rule) or, for ``thirds_fraction`` of the scenes, near a thirds point
    (composition rule)."""
    radius = _uniform(generator, *config.radius_range)
    if config.rule == "composition" and _uniform(generator) < config.thirds_fraction:
        point = THIRDS[_choice(generator, len(THIRDS))]
        jitter = torch.randn(2, generator=generator, dtype=torch.float64) * config.thirds_jitter
        centre = tuple(min(max(p + float(j), radius), 1 - radius) for p, j in zip(point, jitter))
    else:
        centre = (_uniform(generator, radius, 1 - radius), _uniform(generator, radius, 1 - radius))
    return Subject(shape=SHAPES[_choice(generator, len(SHAPES))], centre=centre, radius=radius,
                   blur=_uniform(generator), luminance=_uniform(generator, *config.luminance_range),
                   hue=_uniform(generator), hue_spread=_uniform(generator, 0.0, 0.5),
                   period=_uniform(generator, *config.period_range), angle=_uniform(generator, 0, math.pi))


def sample_background(generator: torch.Generator, config: PlantedConfig, photo_count: int) -> Background:
    """A background drawn independently of the subject."""
    texture = photo_count == 0 or _uniform(generator) < config.texture_fraction
    source = TEXTURES[_choice(generator, len(TEXTURES))] if texture else "photo"
    return Background(source=source, index=0 if texture else _choice(generator, photo_count),
                      crop_side=_uniform(generator, *config.crop_range),
                      crop_offset=(_uniform(generator), _uniform(generator)), flip=_uniform(generator) < 0.5,
                      texture_seed=int(torch.randint(2**31 - 1, (), generator=generator)),
                      hue_shift=_uniform(generator, -0.1, 0.1), saturation=_uniform(generator, 0.5, 1.5),
                      luminance=_uniform(generator, *config.luminance_range), blur=_uniform(generator))


def sample_scene(generator: torch.Generator, config: PlantedConfig, photo_count: int) -> PlantedScene:
    return PlantedScene(sample_subject(generator, config), sample_background(generator, config, photo_count))


# ------------------------------------------------------------------------------------------ rendering
@functools.lru_cache(maxsize=4)
def background_photos(side: int = 320) -> tuple[torch.Tensor, ...]:
    """The offline photo pool ``[3,h,w]`` in [0,1], shorter side resized to ``side``: the pip-shipped samples, then
    the foolbox wheel's 20 ImageNet images (cached per ``side``)."""
    from PIL import Image

    from xaiimg.data.images import foolbox_imagenet_samples, sample_images

    images = list(sample_images()) + [image for image, _ in foolbox_imagenet_samples()]
    photos = []
    for image in images:
        scale = side / min(image.size)
        image = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))),
                             Image.BILINEAR)
        photos.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
                      .view(image.height, image.width, 3).permute(2, 0, 1).float() / 255)
    return tuple(photos)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[3,H,W]`` (reflect border); sigmas below 0.3 px leave the image as is."""
    if sigma < 0.3:
        return image
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (image.shape[-1] // 2) - 1)
    return gaussian_blur(image[None], kernel, sigma, border="reflect")[0]


def luminance(image: torch.Tensor) -> torch.Tensor:
    """BT.601 luminance ``[...,H,W]`` of RGB ``[...,3,H,W]``."""
    weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * weights).sum(-3)


def _rotate_hue(image: torch.Tensor, turn: float) -> torch.Tensor:
    """Rotate the chroma of ``[3,H,W]`` by ``turn`` of a circle in YIQ space (luminance kept)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = math.cos(2 * math.pi * turn), math.sin(2 * math.pi * turn)
    rotation = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    return torch.einsum("ij,jhw->ihw", matrix, image)


def _texture(kind: str, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if kind == "noise":  # coloured band-limited noise: coarse blobs + fine grain
        coarse = F.interpolate(torch.rand(1, 3, 5, 5, generator=generator), size=(size, size), mode="bicubic",
                               align_corners=False)[0]
        return coarse + 0.15 * torch.randn(1, size, size, generator=generator)
    coords = torch.arange(size, dtype=torch.float32) / size  # "waves": three coloured gratings
    image = torch.zeros(3, size, size)
    for _ in range(3):
        angle, period = float(torch.rand((), generator=generator)) * math.pi, 0.05 + 0.3 * float(
            torch.rand((), generator=generator))
        along = coords.view(-1, 1) * math.sin(angle) + coords.view(1, -1) * math.cos(angle)
        colour = torch.rand(3, 1, 1, generator=generator)
        image = image + colour * (0.5 + 0.5 * torch.sin(2 * math.pi * along / period))
    return image / 3


def render_background(background: Background, config: PlantedConfig,
                      photos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``[3,H,W]`` in [0,1]: photo crop (or texture), flip, hue rotation, saturation, re-exposure to the drawn mean
    luminance, blur."""
    size = config.size
    if background.source == "photo":
        photo = photos[background.index]
        side = max(8, round(background.crop_side * min(photo.shape[-2:])))
        top = round(background.crop_offset[0] * (photo.shape[-2] - side))
        left = round(background.crop_offset[1] * (photo.shape[-1] - side))
        crop = photo[:, top:top + side, left:left + side]
        image = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
    elif background.source in TEXTURES:
        image = _texture(background.source, size, background.texture_seed)
    else:
        raise ValueError(f"unknown background source {background.source!r}; use 'photo' or one of {TEXTURES}")
    if background.flip:
        image = image.flip(-1)
    image = _rotate_hue(image, background.hue_shift)
    grey = luminance(image)[None]
    image = (grey + background.saturation * (image - grey)).clamp(0, 1)
    image = (image * background.luminance / luminance(image).mean().clamp_min(1e-3)).clamp(0, 1)
    return _blur(image, background.blur * config.max_background_blur * size / 224).clamp(0, 1)


def render_subject(subject: Subject, config: PlantedConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(texture [3,H,W], mask [1,H,W] bool)``: stripes alternating two colours of hue ``hue`` and
    ``hue + hue_spread`` whose luminance alternates around ``luminance`` by ``stripe_contrast``, blurred over the
    whole frame (so that the mask's inside never sees the background)."""
    size = config.size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    along = coords.view(-1, 1) * math.sin(subject.angle) + coords.view(1, -1) * math.cos(subject.angle)
    stripe = torch.sin(2 * math.pi * along / subject.period) >= 0
    colours = []
    for hue in (subject.hue, subject.hue + subject.hue_spread):
        rgb = torch.tensor(colorsys.hsv_to_rgb(hue % 1.0, config.saturation, 1.0), dtype=torch.float32)
        colours.append(rgb / float((rgb * torch.tensor(LUMA)).sum()))  # unit luminance
    levels = subject.luminance * (1 + config.stripe_contrast * torch.where(stripe, 1.0, -1.0))
    texture = torch.where(stripe, colours[0].view(3, 1, 1), colours[1].view(3, 1, 1)) * levels
    texture = _blur(texture.clamp(0, 1), subject.blur * config.max_subject_blur * subject.period * size)
    return texture.clamp(0, 1), shape_mask(subject.shape, subject.centre, subject.radius, size)[None]


def render_scene(scene: PlantedScene, config: PlantedConfig,
                 photos: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image [3,H,W] in [0,1], subject mask [1,H,W] bool)``: the subject texture inside the mask, the
    background outside it, untouched."""
    texture, mask = render_subject(scene.subject, config)
    return torch.where(mask, texture, render_background(scene.background, config, photos)), mask


def bounding_box_masks(masks: torch.Tensor) -> torch.Tensor:
    """The bounding box of each mask ``[B,1,H,W]`` (bool) as a mask of the same shape (the ground truth of the
    energy-based pointing game, Wang et al. 2020, which uses boxes)."""
    flat = masks.bool().flatten(0, 1)
    rows, cols = flat.any(dim=2), flat.any(dim=1)
    index = torch.arange(flat.shape[-1], device=masks.device)

    def span(present: torch.Tensor, length: int) -> torch.Tensor:
        first = torch.where(present, index[:length], length).amin(1, keepdim=True)
        last = torch.where(present, index[:length], -1).amax(1, keepdim=True)
        positions = index[:length].view(1, -1)
        return (positions >= first) & (positions <= last)

    boxes = span(rows, flat.shape[1])[:, :, None] & span(cols, flat.shape[2])[:, None, :]
    return boxes.view_as(masks)


# ------------------------------------------------------------------------------------------------ sets
@dataclass
class PlantedSet:
    """``images [N,3,H,W]`` in [0,1], ``masks [N,1,H,W]`` bool, ``scores [N]``, ``distributions [N,10]``, the per-
    scene score ``terms`` and the ``scenes`` that generated them."""

    images: torch.Tensor
    masks: torch.Tensor
    scores: torch.Tensor
    distributions: torch.Tensor
    terms: list[dict[str, float]]
    scenes: list[PlantedScene]
    config: PlantedConfig
    seed: int

    def __len__(self) -> int:
        return len(self.scenes)

    def dataset(self, spec=None) -> TensorDataset:
        """``(image, distribution)`` pairs; images normalised with ``spec.from_unit_range`` given a ModelSpec."""
        images = self.images if spec is None else spec.from_unit_range(self.images)
        return TensorDataset(images, self.distributions)


def render_set(scenes: list[PlantedScene], config: PlantedConfig, photos: tuple[torch.Tensor, ...] | None = None,
               seed: int = -1) -> PlantedSet:
    """Render given scenes (e.g. with swapped backgrounds) into a :class:`PlantedSet`."""
    if not scenes:
        raise ValueError("no scenes to render")
    photos = background_photos() if photos is None else photos
    rendered = [render_scene(scene, config, photos) for scene in scenes]
    scores = torch.tensor([scene_score(scene, config) for scene in scenes], dtype=torch.float32)
    return PlantedSet(images=torch.stack([image for image, _ in rendered]),
                      masks=torch.stack([mask for _, mask in rendered]), scores=scores,
                      distributions=gaussian_votes(scores, config.vote_sd),
                      terms=[scene_terms(scene, config) for scene in scenes], scenes=list(scenes), config=config,
                      seed=seed)


def make_planted_set(n: int, config: PlantedConfig | None = None, seed: int = 0,
                     photos: tuple[torch.Tensor, ...] | None = None) -> PlantedSet:
    """``n`` seeded scenes, rendered. ``photos``: the background pool (default :func:`background_photos`; an empty
    tuple gives texture backgrounds only)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    config = config or PlantedConfig()
    photos = background_photos() if photos is None else tuple(photos)
    generator = torch.Generator().manual_seed(seed)
    scenes = [sample_scene(generator, config, len(photos)) for _ in range(n)]
    return render_set(scenes, config, photos, seed)
