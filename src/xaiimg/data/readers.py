"""Readers for the full-scale datasets of the papers: ImageNet val, PASCAL VOC 2007 test, COCO val2014 instance
masks, and ImageNet-Segmentation (``gtsegs_ijcv.mat``).

Each reader checks its layout when constructed and raises :class:`DatasetLayoutError` naming the missing file or
folder and the layout it expected; ``data/README.md`` says where to obtain each dataset and how to point
``params.yaml`` at it. Images load lazily through :func:`xaiimg.data.images.load_image`.

Box convention (VOC and COCO): ``(x0, y0, x1, y1)`` in 0-based pixel indices with exclusive ends, so a box
covers ``mask[y0:y1, x0:x1]``. VOC's XML stores 1-based inclusive corners: ``x0 = xmin - 1``, ``y0 = ymin - 1``,
``x1 = xmax``, ``y1 = ymax`` (the same pixels TorchRay's ``voc_as_mask`` fills).
"""
from __future__ import annotations

import contextlib
import csv
import io
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xaiimg.data.images import IMAGE_SUFFIXES, ImageFolder, LabelledImage, load_image

README = "data/README.md"

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


class DatasetLayoutError(FileNotFoundError):
    """A dataset file or folder is missing or not in the expected layout; the message says what was expected."""


def _require(path: Path, what: str, layout: str, is_dir: bool = False) -> Path:
    exists = path.is_dir() if is_dir else path.is_file()
    if not exists:
        kind = "folder" if is_dir else "file"
        raise DatasetLayoutError(f"{what}: {kind} not found: {path}. Expected layout: {layout} (see {README})")
    return path


# ---------------------------------------------------------------------------------------------- ImageNet
IMAGENET_LAYOUT = ("either <root>/ILSVRC2012_val_00000001.JPEG ... with labels from LOC_val_solution.csv "
                   "(+ LOC_synset_mapping.txt), a 'file label' list such as val.txt, or a CSV 'file,label'; "
                   "or class folders <root>/<wnid>/*.JPEG (torchvision layout) with 1000 folders or a synset list")


class ImageNetVal:
    """ILSVRC2012 validation images with ImageNet-1k labels (0..999, torchvision/timm index order).

    ``labels`` may be (chosen by content):

    * ``LOC_val_solution.csv`` (Kaggle ILSVRC challenge): ``ImageId,PredictionString`` rows whose first
      ``wnid`` is the label; wnids map to indices through ``synsets`` (default: ``LOC_synset_mapping.txt``
      beside the CSV), one ``wnid name...`` line per class in index order.
    * a text list ``ILSVRC2012_val_00000001.JPEG 65`` per line (Caffe's ``val.txt``), labels already indices.
    * a CSV with header ``file,label`` (read by :class:`xaiimg.data.images.ImageFolder`).
    * ``None``: ``root`` holds one folder per class named by wnid (torchvision's ``ImageFolder``/``ImageNet``
      layout); the index of a wnid is its position in ``synsets`` or, without it, in the sorted list of the
      folders, which is the standard order only when all 1000 are present (checked).

    ``items`` lists :class:`~xaiimg.data.images.LabelledImage` ``(path, label)`` sorted by file name;
    ``dataset[i]`` returns ``(PIL image, label)``.
    """

    def __init__(self, root: str | Path, labels: str | Path | None = None, synsets: str | Path | None = None):
        self.root = _require(Path(root), "ImageNet val images", IMAGENET_LAYOUT, is_dir=True)
        if labels is None:
            self.items = self._class_folders(synsets)
            return
        labels = _require(Path(labels), "ImageNet val labels", IMAGENET_LAYOUT)
        with labels.open() as handle:
            first_line = handle.readline().strip().lower()
        if first_line.startswith("imageid,predictionstring"):
            synsets = Path(synsets) if synsets is not None else labels.parent / "LOC_synset_mapping.txt"
            by_file = self._loc_solution(labels, _read_synsets(synsets))
        elif first_line.startswith("file,label"):
            self.items = ImageFolder(self.root, labels).items
            return
        else:
            by_file = _read_file_label_list(labels)
        self.items = _attach_paths(self.root, by_file, "ImageNet val")

    def _class_folders(self, synsets) -> list[LabelledImage]:
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not folders:
            raise DatasetLayoutError(f"ImageNet val: {self.root} has no class folders and no labels file was given. "
                                     f"Expected layout: {IMAGENET_LAYOUT} (see {README})")
        if synsets is not None:
            index = {wnid: i for i, wnid in enumerate(_read_synsets(Path(synsets)))}
        elif len(folders) == 1000:
            index = {folder.name: i for i, folder in enumerate(folders)}
        else:
            raise DatasetLayoutError(
                f"ImageNet val: {self.root} has {len(folders)} class folders, not 1000, so their sorted order is not "
                f"the ImageNet index order; pass synsets= a file of the 1000 wnids in index order "
                f"(LOC_synset_mapping.txt or synset_words.txt) (see {README})")
        unknown = [f.name for f in folders if f.name not in index]
        if unknown:
            raise ValueError(f"ImageNet val: class folders {unknown[:3]} are not in the synset list")
        return [LabelledImage(path, index[folder.name]) for folder in folders
                for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]

    @staticmethod
    def _loc_solution(path: Path, wnids: list[str]) -> dict[str, int]:
        index = {wnid: i for i, wnid in enumerate(wnids)}
        labels = {}
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            next(reader)
            for line_number, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    wnid = row[1].split()[0]
                    labels[row[0] + ".JPEG"] = index[wnid]
                except (IndexError, KeyError):
                    raise ValueError(f"{path}:{line_number}: expected 'ImageId,<wnid> x0 y0 x1 y1 ...' with a wnid "
                                     f"from the synset list, got {row}") from None
        return labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        item = self.items[index]
        return load_image(item.path), item.label

    @property
    def labels(self) -> list[int]:
        return [item.label for item in self.items]


def _read_synsets(path: Path) -> list[str]:
    """wnids in index order from ``LOC_synset_mapping.txt`` / ``synset_words.txt`` (``n01440764 tench, ...``)."""
    _require(path, "ImageNet synset list", "one line 'n01440764 tench, Tinca tinca' per class, in index order")
    wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if len(wnids) != 1000 or not all(w.startswith("n") and w[1:].isdigit() for w in wnids):
        raise ValueError(f"{path}: expected 1000 lines starting with a wnid such as n01440764, got {len(wnids)} lines")
    return wnids


def _read_file_label_list(path: Path) -> dict[str, int]:
    labels = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 0 <= int(parts[1]) < 1000:
            raise ValueError(f"{path}:{line_number}: expected 'ILSVRC2012_val_00000001.JPEG <label 0..999>', "
                             f"got {line!r}")
        labels[parts[0]] = int(parts[1])
    return labels


def _attach_paths(root: Path, labels: dict[str, int], what: str) -> list[LabelledImage]:
    missing = sorted(name for name in labels if not (root / name).is_file())
    if missing:
        raise DatasetLayoutError(f"{what}: {len(missing)} labelled images missing from {root}, e.g. {missing[:3]} "
                                 f"(see {README})")
    return [LabelledImage(root / name, labels[name]) for name in sorted(labels)]


# ------------------------------------------------------------------------------------------ PASCAL VOC
VOC_LAYOUT = ("<root>/VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<split>.txt} "
              "(root may also be the VOCdevkit or the VOC2007 folder)")


@dataclass(frozen=True)
class VOCObject:
    """One annotated object; ``box`` = ``(x0, y0, x1, y1)`` 0-based, exclusive ends (see module docstring)."""

    name: str
    class_index: int
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class VOCAnnotation:
    image_id: str
    path: Path
    width: int
    height: int
    objects: tuple[VOCObject, ...]

    @property
    def classes(self) -> list[int]:
        """Sorted class indices present in the image."""
        return sorted({o.class_index for o in self.objects})

    def class_mask(self, class_index: int, include_difficult: bool = True) -> np.ndarray:
        """``[height, width]`` bool: the union of the boxes of ``class_index`` (the pointing game's ground truth,
        as TorchRay's ``voc_as_mask``); all False when the class is absent."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        for o in self.objects:
            if o.class_index == class_index and (include_difficult or not o.difficult):
                x0, y0, x1, y1 = o.box
                mask[y0:y1, x0:x1] = True
        return mask

    def all_difficult(self, class_index: int) -> bool:
        """True when every box of the class is marked PASCAL-difficult (TorchRay skips such image/class pairs)."""
        boxes = [o for o in self.objects if o.class_index == class_index]
        return bool(boxes) and all(o.difficult for o in boxes)


class VOCDetection:
    """PASCAL VOC detection annotations (default: VOC2007 ``test``). ``dataset[i]`` = ``(PIL image, VOCAnnotation)``;
    ``dataset.annotation(i)`` parses the XML without loading the image."""

    def __init__(self, root: str | Path, split: str = "test", year: str = "2007"):
        self.root = _voc_folder(Path(root), year)
        self.split = split
        split_file = _require(self.root / "ImageSets" / "Main" / f"{split}.txt", f"VOC{year} {split} list", VOC_LAYOUT)
        for sub in ("JPEGImages", "Annotations"):
            _require(self.root / sub, f"VOC{year} {sub}", VOC_LAYOUT, is_dir=True)
        self.image_ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        self.class_names = list(VOC_CLASSES)
        if not self.image_ids:
            raise DatasetLayoutError(f"VOC{year}: {split_file} lists no images (see {README})")

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotation(self, index: int) -> VOCAnnotation:
        image_id = self.image_ids[index]
        xml_path = _require(self.root / "Annotations" / f"{image_id}.xml", f"VOC annotation of {image_id}", VOC_LAYOUT)
        return parse_voc_xml(xml_path, self.root / "JPEGImages" / f"{image_id}.jpg")

    def __getitem__(self, index: int) -> tuple[Image.Image, VOCAnnotation]:
        annotation = self.annotation(index)
        return load_image(annotation.path), annotation


def _voc_folder(root: Path, year: str) -> Path:
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "Annotations").is_dir() or (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetLayoutError(f"VOC{year}: folder not found under {root}: looked for {root}/VOCdevkit/VOC{year}, "
                             f"{root}/VOC{year} and {root} itself. Expected layout: {VOC_LAYOUT} (see {README})")


def parse_voc_xml(xml_path: str | Path, image_path: str | Path) -> VOCAnnotation:
    """Read one VOC annotation file; boxes converted from 1-based inclusive to 0-based exclusive-end."""
    xml_path = Path(xml_path)
    try:
        root = ElementTree.parse(xml_path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{xml_path}: not a valid VOC annotation XML ({error})") from None

    def number(node, tag: str) -> int:
        child = node.find(tag)
        if child is None or child.text is None:
            raise ValueError(f"{xml_path}: missing <{tag}>")
        return int(float(child.text))

    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: missing <size>")
    width, height = number(size, "width"), number(size, "height")
    objects = []
    for node in root.findall("object"):
        name = (node.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"{xml_path}: unknown VOC class {name!r}")
        box = node.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (number(box, t) for t in ("xmin", "ymin", "xmax", "ymax"))
        if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
            raise ValueError(f"{xml_path}: box {(xmin, ymin, xmax, ymax)} of {name!r} is outside the 1-based image "
                             f"{width}x{height}")
        objects.append(VOCObject(name, VOC_CLASSES.index(name), (xmin - 1, ymin - 1, xmax, ymax),
                                 difficult=(node.findtext("difficult") or "0").strip() == "1",
                                 truncated=(node.findtext("truncated") or "0").strip() == "1"))
    return VOCAnnotation(xml_path.stem, Path(image_path), width, height, tuple(objects))


# ------------------------------------------------------------------------------------------------ COCO
COCO_LAYOUT = "<root>/annotations/instances_<split>.json and <root>/<split>/COCO_<split>_000000XXXXXX.jpg"


class COCOInstances:
    """COCO instance annotations (default ``val2014``) with per-category union masks via pycocotools.

    ``image_ids``: every image of the annotation file, sorted (as torchvision's ``CocoDetection``);
    ``category_ids``: COCO category ids sorted, whose position is the contiguous class index 0..79 (TorchRay's
    convention). Crowd annotations are part of the masks unless ``include_crowd=False`` (TorchRay keeps them).
    """

    def __init__(self, root: str | Path, split: str = "val2014", include_crowd: bool = True):
        from pycocotools.coco import COCO

        self.root = Path(root)
        self.annotation_file = _require(self.root / "annotations" / f"instances_{split}.json",
                                        f"COCO {split} annotations", COCO_LAYOUT)
        self.image_folder = _require(self.root / split, f"COCO {split} images", COCO_LAYOUT, is_dir=True)
        self.include_crowd = include_crowd
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(self.annotation_file))
            missing = {"images", "annotations", "categories"} - set(self.coco.dataset)
            if missing:
                raise KeyError(f"no {sorted(missing)} lists")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.annotation_file}: not a COCO instances file ({type(error).__name__}: {error})") \
                from None
        self.image_ids = sorted(self.coco.imgs)
        self.category_ids = sorted(self.coco.cats)
        self.class_names = [self.coco.cats[c]["name"] for c in self.category_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.image_folder / self.coco.imgs[self.image_ids[index]]["file_name"]

    def class_masks(self, index: int) -> dict[int, np.ndarray]:
        """``{class index: [height, width] bool}``: per category present, the union of its instance masks
        (polygons, RLE and uncompressed RLE all decoded by pycocotools)."""
        image = self.coco.imgs[self.image_ids[index]]
        index_of = {c: i for i, c in enumerate(self.category_ids)}
        masks: dict[int, np.ndarray] = {}
        for annotation in self.coco.imgToAnns.get(image["id"], []):
            if annotation.get("iscrowd", 0) and not self.include_crowd:
                continue
            mask = self.coco.annToMask(annotation).astype(bool)
            if mask.shape != (image["height"], image["width"]):
                raise ValueError(f"{self.annotation_file}: annotation {annotation['id']} decodes to {mask.shape}, "
                                 f"the image is {image['height']}x{image['width']}")
            label = index_of[annotation["category_id"]]
            masks[label] = masks[label] | mask if label in masks else mask
        return dict(sorted(masks.items()))

    def __getitem__(self, index: int) -> tuple[Image.Image, dict[int, np.ndarray]]:
        return load_image(self.image_path(index)), self.class_masks(index)


# ------------------------------------------------------------------------------- ImageNet-Segmentation
IMAGENET_SEG_LAYOUT = ("gtsegs_ijcv.mat: a MATLAB v7.3 (HDF5) file with datasets value/img and value/gt of object "
                       "references ([N,1]); value/img[i] -> uint8 [3,W,H], value/gt[i] -> [1,1] reference -> uint8 "
                       "[W,H] (0 background, 1 object)")


class ImageNetSegmentation:
    """ImageNet-Segmentation ground truth (Guillaumin et al. 2014, the 4,276-image ``gtsegs_ijcv.mat`` used by
    Chefer et al. 2021), read with h5py the way their ``imagenet_seg_dataset.py`` does: MATLAB stores arrays
    column-major, so images are transposed ``(2, 1, 0)`` to ``H x W x 3`` and masks ``(1, 0)`` to ``H x W``.

    ``dataset[i]`` = ``(PIL RGB image, uint8 mask [H, W])``; :meth:`resized` applies Chefer's protocol.
    """

    def __init__(self, path: str | Path):
        self.path = _require(Path(path), "ImageNet-Segmentation", IMAGENET_SEG_LAYOUT)
        self._file = None
        with self._open() as file:
            for key in ("value/img", "value/gt"):
                if key not in file:
                    raise ValueError(f"{self.path} has no dataset {key!r}. Expected {IMAGENET_SEG_LAYOUT} "
                                     f"(see {README})")
            self._length = len(file["value/img"])
            if len(file["value/gt"]) != self._length:
                raise ValueError(f"{self.path}: {self._length} images but {len(file['value/gt'])} masks")

    def _open(self):
        import h5py

        try:
            return h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(f"{self.path} is not an HDF5 (MATLAB v7.3) file: {error}. "
                             f"Expected {IMAGENET_SEG_LAYOUT} (see {README})") from None

    @property
    def file(self):
        """The open HDF5 file (opened on first use, so the reader pickles into DataLoader workers unopened)."""
        if self._file is None:
            self._file = self._open()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        file = self.file
        image = np.asarray(file[file["value/img"][index, 0]]).transpose(2, 1, 0)
        mask = np.asarray(file[file[file["value/gt"][index, 0]][0, 0]]).transpose(1, 0)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
            raise ValueError(f"{self.path}: item {index} has image {image.shape} and mask {mask.shape}; "
                             f"expected H x W x 3 and H x W")
        return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)), np.ascontiguousarray(mask, dtype=np.uint8)

    def wnid(self, index: int) -> str | None:
        """The synset id stored in ``value/id`` (UTF-16 characters), or None when the file has none."""
        file = self.file
        if "value/id" not in file:
            return None
        characters = np.asarray(file[file["value/id"][index, 0]]).ravel()
        return "".join(map(chr, characters)).strip()

    def resized(self, index: int, size: int = 224):
        """Chefer et al.'s protocol: image ``Resize((size, size))`` (bilinear), mask nearest-neighbour.
        Returns ``(image float tensor [3,size,size] in [0,1], mask bool tensor [size,size])``."""
        import torch

        image, mask = self[index]
        image = image.resize((size, size), Image.BILINEAR)
        mask = Image.fromarray(mask).resize((size, size), Image.NEAREST)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return tensor, torch.from_numpy(np.asarray(mask) > 0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ImageNetSegmentation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
