"""Synthetic ground-truth benchmark: shapes planted on real textures, with exact masks and boxes.

Every image is a crop of a texture photograph that scikit-image ships (brick, grass, gravel, moon surface,
coffee table, stained tissue), recoloured at random, with one object (``multi_object=False``) or two objects of
different classes (``multi_object=True``) painted on it. The class of an object is its shape only
(disc, square, triangle, cross, ring, star), optionally backed by a colour family: with ``class_hues=True`` (the
default) an object's hue is drawn from its class's sector of the hue circle (sector ``k`` of ``num_classes``,
jittered over its central 80%), with random saturation, brightness and texture shading; with ``class_hues=False``
the hue is uniform, so only the shape tells the classes apart. Size (enclosing-disc diameter 0.15-0.35 of the
image side), rotation and position are random for every object, and backgrounds are recoloured at random, so no
position or background identifies a class. (Why the default has colour families: a small CNN trained for a few
CPU minutes on shape-only scenes stayed near chance: 32% held-out accuracy, cross-entropy 1.66 of ln 6 = 1.79,
after 8,192 training images at 112 px. The colour cue lets the models learn in the time budget, and it lives on
the object's pixels only, so the masks remain the exact class evidence.)

Ground truth is exact by construction: an object's mask is the set of pixels whose centre lies inside the shape,
and exactly those pixels are overwritten with the object's paint (no anti-aliasing), so
``image == background`` outside the masks. Two objects in one scene have disjoint masks: their enclosing discs
are kept at least ``gap`` pixels apart (their boxes may still overlap at the corners).

Every scene is drawn from its own random stream, keyed by ``(seed, split, multi_object, index)``: the same
benchmark always yields the same images, ``generate(10)[:5]`` equals ``generate(5)``, and the train/val/test
splits never share a scene.
"""
from __future__ import annotations

import colorsys
import pickle
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch

SHAPES = ("disc", "square", "triangle", "cross", "ring", "star")
SPLITS = {"train": 0, "val": 1, "test": 2}
TEXTURES = ("brick", "grass", "gravel", "moon", "coffee", "immunohistochemistry")
FORMAT_VERSION = 1
RING_INNER_RADIUS = 0.55  # fraction of the outer radius
CROSS_HALF_WIDTH = 0.3    # arm half-width as a fraction of the enclosing radius
STAR_INNER_RADIUS = 0.45
MIN_COLOUR_DISTANCE = 0.3  # between an object's mean paint and the mean background colour


# ---------------------------------------------------------------------------------------------- shapes
def _regular_polygon(corners: int, radius: float = 1.0, phase: float = np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(corners) / corners
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star_polygon(points: int = 5) -> np.ndarray:
    angles = np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, STAR_INNER_RADIUS)
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _cross_polygon() -> np.ndarray:
    w, h = CROSS_HALF_WIDTH, float(np.sqrt(1 - CROSS_HALF_WIDTH ** 2))  # arm tips touch the unit circle
    return np.array([[w, h], [-w, h], [-w, w], [-h, w], [-h, -w], [-w, -w], [-w, -h], [w, -h], [w, -w], [h, -w],
                     [h, w], [w, w]])


# Polygons in unit coordinates: every shape fits in the unit disc (its "enclosing disc").
_POLYGONS = {
    "square": _regular_polygon(4, phase=np.pi / 4),
    "triangle": _regular_polygon(3),
    "cross": _cross_polygon(),
    "star": _star_polygon(),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd (crossing number) test of the points ``(u, v)`` against a closed polygon."""
    inside = np.zeros(u.shape, dtype=bool)
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        crosses = (b > v) != (d > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = a + (v - b) * (c - a) / (d - b)
        inside ^= crosses & (u < x_at)
    return inside


def shape_mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """``[size, size]`` bool: pixels whose centre ``(x + 0.5, y + 0.5)`` lies inside ``shape`` with centre
    ``(cx, cy)`` (pixels), enclosing radius ``radius`` (pixels), rotated by ``angle`` (radians, counter-clockwise
    in image coordinates with y pointing down)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; available: {SHAPES}")
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = (xs - cx) / radius, (ys - cy) / radius
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotate the grid by -angle = rotate the shape by angle
    r2 = u ** 2 + v ** 2
    if shape == "disc":
        return r2 <= 1.0
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= RING_INNER_RADIUS ** 2)
    return _inside_polygon(u, v, _POLYGONS[shape])


# -------------------------------------------------------------------------------------------- textures
@cache
def _texture(name: str) -> np.ndarray:
    """A texture photograph from ``skimage.data`` as float ``HxW`` (grayscale) or ``HxWx3`` in [0, 1]."""
    from skimage import data

    image = getattr(data, name)()
    return np.asarray(image, dtype=np.float32) / 255.0


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    channels = [array] if array.ndim == 2 else [array[..., c] for c in range(array.shape[2])]
    resized = [np.asarray(Image.fromarray(c, mode="F").resize((size, size), Image.BILINEAR)) for c in channels]
    return resized[0] if array.ndim == 2 else np.stack(resized, axis=-1)


def _texture_crop(rng: np.random.Generator, name: str, size: int, min_fraction: float = 0.4) -> np.ndarray:
    """A random square crop (side ``min_fraction``..1 of the shorter side), random flip/rotation, resized."""
    texture = _texture(name)
    height, width = texture.shape[:2]
    side = int(rng.integers(int(min_fraction * min(height, width)), min(height, width) + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = np.rot90(texture[top:top + side, left:left + side], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(_resize(np.ascontiguousarray(crop), size), 0.0, 1.0)


def _random_colour(rng: np.random.Generator, hue=(0.0, 1.0), saturation=(0.4, 1.0), value=(0.45, 1.0)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*saturation), rng.uniform(*value)),
                    np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size x size x 3`` float background: a recoloured texture crop with reduced, random contrast."""
    name = TEXTURES[int(rng.integers(len(TEXTURES)))]
    crop = _texture_crop(rng, name, size)
    if crop.ndim == 2:  # grayscale: map intensity onto a line between two random colours
        dark, light = _random_colour(rng, value=(0.1, 0.6)), _random_colour(rng, value=(0.4, 1.0))
        image = dark + crop[..., None] * (light - dark)
    else:  # colour: shuffle channels and desaturate by a random amount
        image = crop[..., rng.permutation(3)]
        image = image + rng.uniform(0.0, 0.6) * (image.mean(axis=-1, keepdims=True) - image)
    contrast = rng.uniform(0.5, 1.0)
    image = image.mean() + contrast * (image - image.mean())
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _object_paint(rng: np.random.Generator, size: int, background_colour: np.ndarray,
                  hue_range: tuple[float, float]) -> np.ndarray:
    """``size x size x 3`` paint for one object: a colour with hue in ``hue_range`` (random saturation and
    brightness) shaded by a grayscale texture (0.7-1.0).

    The colour is redrawn (up to 100 times) until it lies at least :data:`MIN_COLOUR_DISTANCE` (RGB, Euclidean)
    from the background's mean colour, so objects stand out.
    """
    for _ in range(100):
        colour = _random_colour(rng, hue=hue_range)
        if np.linalg.norm(0.85 * colour - background_colour) >= MIN_COLOUR_DISTANCE:
            break
    name = TEXTURES[int(rng.integers(4))]  # the grayscale ones
    shading = 0.7 + 0.3 * _texture_crop(rng, name, size)
    return (colour * shading[..., None]).astype(np.float32)


# ------------------------------------------------------------------------------------------- datasets
@dataclass
class SyntheticSet:
    """A batch of synthetic scenes with exact ground truth; ``O`` = objects per scene (1 or 2).

    ``images_uint8`` ``[N,3,H,W]`` uint8 (``images`` gives float in [0,1]); ``labels`` ``[N,O]`` int64 class of
    each object; ``masks`` ``[N,O,H,W]`` bool, exactly the pixels painted for each object; ``boxes`` ``[N,O,4]``
    int64 tight boxes ``(x0, y0, x1, y1)`` in pixel indices, 0-based, ``x1``/``y1`` exclusive, so
    ``masks[n,o,y0:y1,x0:x1]`` holds every object pixel; ``params`` ``[N,O,4]`` float64 ``(cx, cy, radius,
    angle)`` in pixels/radians as passed to :func:`shape_mask`; ``backgrounds_uint8`` the same scenes with no
    object (the image with its evidence removed), kept when asked for.
    """

    images_uint8: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    params: torch.Tensor
    class_names: list[str]
    meta: dict = field(default_factory=dict)
    backgrounds_uint8: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> SyntheticSet:
        """A subset (``index``: int, slice, index tensor or bool tensor), still a :class:`SyntheticSet`."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return SyntheticSet(pick(self.images_uint8), pick(self.labels), pick(self.masks), pick(self.boxes),
                            pick(self.params), list(self.class_names), dict(self.meta), pick(self.backgrounds_uint8))

    @property
    def images(self) -> torch.Tensor:
        """``[N,3,H,W]`` float32 in [0, 1]."""
        return self.images_uint8.float() / 255.0

    @property
    def backgrounds(self) -> torch.Tensor:
        if self.backgrounds_uint8 is None:
            raise ValueError("this set was generated without backgrounds; use generate(..., with_backgrounds=True)")
        return self.backgrounds_uint8.float() / 255.0

    @property
    def targets(self) -> torch.Tensor:
        """``[N]`` the class of the first object of each scene (the only one in single-object scenes)."""
        return self.labels[:, 0]

    def class_masks(self, classes: torch.Tensor | int | None = None) -> torch.Tensor:
        """``[N,H,W]`` bool: per scene, the union of the masks of the objects of class ``classes[n]``
        (default: :attr:`targets`); all False where the scene has no object of that class."""
        classes = self.targets if classes is None else torch.as_tensor(classes).expand(len(self))
        hit = self.labels == classes.view(-1, 1)
        return (self.masks & hit[:, :, None, None]).any(dim=1)

    def to_dict(self) -> dict:
        data = {"images_uint8": self.images_uint8, "labels": self.labels, "masks": self.masks,
                "boxes": self.boxes, "params": self.params, "class_names": list(self.class_names),
                "meta": dict(self.meta), "format_version": FORMAT_VERSION}
        if self.backgrounds_uint8 is not None:
            data["backgrounds_uint8"] = self.backgrounds_uint8
        return data

    def save(self, path: str | Path) -> Path:
        """Write a ``.pt`` file (tensors, strings and numbers only: loadable with ``weights_only=True``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.to_dict(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SyntheticSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"synthetic benchmark file not found: {path} (write one with SyntheticSet.save)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ValueError(f"{path} is not a synthetic benchmark file: it holds pickled Python objects or no "
                             f"torch data ({type(error).__name__}); refused without executing it") from None
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a synthetic benchmark file of format version {FORMAT_VERSION}")
        return cls(data["images_uint8"], data["labels"], data["masks"], data["boxes"], data["params"],
                   list(data["class_names"]), dict(data["meta"]), data.get("backgrounds_uint8"))


PLACEMENTS = ("uniform", "centred")
CENTRED_JITTER = 0.05   # centred placement: centre within +-5% of the side from the image centre


class SyntheticBenchmark:
    """Seeded generator of :class:`SyntheticSet` scenes.

    ``size``: image side in pixels; ``num_classes``: how many of :data:`SHAPES` (in order) are classes;
    ``scale``: range of an object's enclosing-disc diameter as a fraction of ``size``; ``gap``: minimum pixels
    between the enclosing discs of two objects in one scene; ``class_hues``: colour families per class (see the
    module docstring); ``placement``: ``"uniform"`` (default: centres uniform over the positions where the object
    fits) or ``"centred"`` (single-object scenes: the centre within ``CENTRED_JITTER`` of the size from the image
    centre, like most ImageNet photographs; a control for centre priors).
    """

    def __init__(self, size: int = 224, num_classes: int = len(SHAPES), seed: int = 0,
                 scale: tuple[float, float] = (0.15, 0.35), gap: float = 4.0, class_hues: bool = True,
                 placement: str = "uniform"):
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be 2..{len(SHAPES)}, got {num_classes}")
        if not 0 < scale[0] <= scale[1] <= 0.45:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 0.45 (two objects must fit), got {scale}")
        if size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {size}")
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; use one of {list(PLACEMENTS)}")
        self.placement = placement
        self.size, self.num_classes, self.seed = int(size), int(num_classes), int(seed)
        self.scale, self.gap, self.class_hues = (float(scale[0]), float(scale[1])), float(gap), bool(class_hues)

    def hue_range(self, label: int) -> tuple[float, float]:
        """Hues an object of class ``label`` may take: the central 80% of its sector, or all of them."""
        if not self.class_hues:
            return 0.0, 1.0
        return (label + 0.1) / self.num_classes, (label + 0.9) / self.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(SHAPES[:self.num_classes])

    @property
    def config(self) -> dict:
        config = {"size": self.size, "num_classes": self.num_classes, "seed": self.seed, "scale": list(self.scale),
                  "gap": self.gap, "class_hues": self.class_hues}
        # "uniform" stays implicit so configs (and the checkpoints holding them) written before it existed match
        return config if self.placement == "uniform" else {**config, "placement": self.placement}

    def generate(self, n: int, multi_object: bool = False, split: str = "train", start: int = 0,
                 with_backgrounds: bool = False) -> SyntheticSet:
        """Scenes ``start .. start + n - 1`` of ``split`` ("train", "val" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        if n < 1 or start < 0:
            raise ValueError(f"need n >= 1 and start >= 0, got n={n}, start={start}")
        objects = 2 if multi_object else 1
        if self.placement == "centred" and multi_object:
            raise ValueError("placement='centred' holds one object per scene; use multi_object=False")
        images = np.empty((n, self.size, self.size, 3), np.uint8)
        backgrounds = np.empty_like(images) if with_backgrounds else None
        labels = np.empty((n, objects), np.int64)
        masks = np.empty((n, objects, self.size, self.size), bool)
        params = np.empty((n, objects, 4), np.float64)
        for i in range(n):
            rng = np.random.default_rng([self.seed, SPLITS[split], objects, start + i])
            background, image, scene_labels, scene_masks, scene_params = self._scene(rng, objects)
            images[i] = _to_uint8(image)
            if backgrounds is not None:
                backgrounds[i] = _to_uint8(background)
            labels[i], masks[i], params[i] = scene_labels, scene_masks, scene_params
        meta = dict(self.config, split=split, start=int(start), multi_object=bool(multi_object))
        return SyntheticSet(
            images_uint8=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            labels=torch.from_numpy(labels), masks=torch.from_numpy(masks), boxes=_tight_boxes(masks),
            params=torch.from_numpy(params), class_names=self.class_names, meta=meta,
            backgrounds_uint8=None if backgrounds is None else torch.from_numpy(backgrounds).permute(0, 3, 1, 2)
            .contiguous())

    def _scene(self, rng: np.random.Generator, objects: int):
        background = _background(rng, self.size)
        image = background.copy()
        classes = rng.choice(self.num_classes, size=objects, replace=False)
        placed: list[tuple[float, float, float]] = []
        masks, params = [], []
        for label in classes:
            cx, cy, radius = self._place(rng, placed)
            angle = rng.uniform(0, 2 * np.pi)
            mask = shape_mask(SHAPES[label], self.size, cx, cy, radius, angle)
            paint = _object_paint(rng, self.size, background.reshape(-1, 3).mean(axis=0), self.hue_range(label))
            image[mask] = paint[mask]
            placed.append((cx, cy, radius))
            masks.append(mask)
            params.append((cx, cy, radius, angle))
        return background, image, classes, np.stack(masks), np.array(params)

    def _place(self, rng: np.random.Generator, placed: list[tuple[float, float, float]]):
        """Centre and radius of an object fully inside the image and ``gap`` pixels clear of ``placed`` ones."""
        for _ in range(1000):
            radius = rng.uniform(*self.scale) * self.size / 2
            if self.placement == "centred":
                cx, cy = self.size / 2 + rng.uniform(-CENTRED_JITTER, CENTRED_JITTER, size=2) * self.size
                return float(cx), float(cy), float(radius)
            cx, cy = rng.uniform(radius, self.size - radius, size=2)
            if all(np.hypot(cx - x, cy - y) >= radius + r + self.gap for x, y, r in placed):
                return float(cx), float(cy), float(radius)
        raise RuntimeError(f"could not place an object clear of {len(placed)} others in 1000 tries "
                           f"(size {self.size}, scale {self.scale}, gap {self.gap})")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _tight_boxes(masks: np.ndarray) -> torch.Tensor:
    """``[N,O,4]`` ``(x0, y0, x1, y1)`` with exclusive ends around each mask (masks are never empty)."""
    rows, cols = masks.any(axis=3), masks.any(axis=2)  # [N,O,H], [N,O,W]
    if not rows.any(axis=-1).all():
        raise RuntimeError("an object has an empty mask; increase the scale or the image size")
    y0, x0 = rows.argmax(axis=-1), cols.argmax(axis=-1)
    y1 = rows.shape[-1] - rows[..., ::-1].argmax(axis=-1)
    x1 = cols.shape[-1] - cols[..., ::-1].argmax(axis=-1)
    return torch.from_numpy(np.stack([x0, y0, x1, y1], axis=-1).astype(np.int64))
