"""Images and datasets: pip-shipped samples, labelled folders, dataset readers, synthetic benchmarks.

The readers and the synthetic benchmark load on first access (``xaiimg.data.VOCDetection``), so importing this
package stays light.
"""
from importlib import import_module

from xaiimg.data.images import (
    SAMPLES,
    ImageFolder,
    ImageLoadError,
    SampleImage,
    decode_image,
    foolbox_imagenet_samples,
    load_image,
    sample_images,
    sample_names,
    to_rgb,
)

_LAZY = {
    "DatasetLayoutError": "xaiimg.data.readers",
    "ImageNetVal": "xaiimg.data.readers",
    "VOCDetection": "xaiimg.data.readers",
    "COCOInstances": "xaiimg.data.readers",
    "ImageNetSegmentation": "xaiimg.data.readers",
    "VOC_CLASSES": "xaiimg.data.readers",
    "SyntheticBenchmark": "xaiimg.data.synthetic",
    "SyntheticSet": "xaiimg.data.synthetic",
}

__all__ = ["SAMPLES", "ImageFolder", "ImageLoadError", "SampleImage", "decode_image", "foolbox_imagenet_samples",
           "load_image", "sample_images", "sample_names", "to_rgb", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'xaiimg.data' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
