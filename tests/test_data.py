"""Image loading: every odd format converts to RGB; every broken file raises a clear error."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xaiimg.data import SAMPLES, ImageFolder, ImageLoadError, load_image, sample_images
from xaiimg.models.zoo import top_k


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_modes_convert_to_rgb(mode, tmp_path):
    array = (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)
    if mode == "I;16":
        image = Image.fromarray(array.astype(np.uint16) * 257)
        assert image.mode == "I;16"
        path = tmp_path / "deep.png"
    else:
        image = Image.fromarray(array, mode="L").convert(mode)
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (32, 24)
    if mode == "I;16":
        assert np.array_equal(np.asarray(loaded)[..., 0], array)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(path)


def test_truncated_image(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(path)
    assert path.read_bytes() == data[: len(data) // 2]


def test_decompression_bomb(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 1e8 pixels, a few KB on disk
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path)


def test_image_folder_reads_labels(tmp_path):
    for name in ["b.png", "a.png"]:
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("file,label,source\na.png,3,x\nb.png,7,y\n")
    folder = ImageFolder(tmp_path, tmp_path / "labels.csv")
    assert [i.path.name for i in folder.items] == ["a.png", "b.png"] and folder.labels == [3, 7]


def test_image_folder_rejects_bad_label_row(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("file,label\na.png,cat\n")
    with pytest.raises(ValueError, match="labels.csv:2"):
        ImageFolder(tmp_path, tmp_path / "labels.csv")


def test_samples_show_their_imagenet_class(lite0):
    named = [n for n, s in SAMPLES.items() if s.imagenet_class is not None]
    x = lite0.preprocess(sample_images(named))
    for name, top5 in zip(named, top_k(lite0, x, k=5)):
        assert SAMPLES[name].imagenet_class in [index for index, _, _ in top5], (name, top5)


def test_unknown_sample_name():
    with pytest.raises(ValueError, match="unknown sample"):
        sample_images(["lena"])


def test_foolbox_samples_are_the_labelled_imagenet_images_of_the_shared_folder(shared_data):
    """The 20 images the foolbox wheel ships carry the labels of the official validation ground truth (as the
    shared sample folder records them) and are the same pictures."""
    from xaiimg.data import foolbox_imagenet_samples

    folder = foolbox_imagenet_samples()
    shared = ImageFolder(shared_data / "imagenet-samples" / "images", shared_data / "imagenet-samples" / "labels.csv")
    shared_labels = {item.path.name: item.label for item in shared.items}
    assert len(folder) == 20
    assert {item.path.name: item.label for item in folder.items} == {
        name: label for name, label in shared_labels.items() if name.startswith("imagenet_")}
    for item in folder.items[:3]:
        ours = np.asarray(load_image(item.path), dtype=np.int16)
        theirs = np.asarray(load_image(shared_data / "imagenet-samples" / "images" / item.path.name), dtype=np.int16)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).mean() < 2.0


def test_foolbox_samples_are_mostly_recognised_by_lite0(lite0):
    from xaiimg.data import foolbox_imagenet_samples

    folder = foolbox_imagenet_samples()
    predicted = lite0(lite0.preprocess([load_image(item.path) for item in folder.items])).argmax(1).tolist()
    correct = sum(p == label for p, label in zip(predicted, folder.labels))
    assert correct >= 15, f"Lite0 top-1 on the foolbox samples: {correct}/20"


def test_image_folder_takes_labels_by_name_and_refuses_missing_files(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    folder = ImageFolder(tmp_path, labels={"b.png": 7})
    assert [item.path.name for item in folder.items] == ["b.png"] and folder.labels == [7]
    with pytest.raises(FileNotFoundError, match="1 labelled files missing"):
        ImageFolder(tmp_path, labels={"c.png": 1})
    with pytest.raises(ValueError, match="not both"):
        ImageFolder(tmp_path, tmp_path / "labels.csv", labels={"a.png": 1})
