"""Images and datasets: pip-shipped samples, labelled folders, dataset readers, synthetic benchmarks."""
from xaiimg.data.images import (SAMPLES, ImageFolder, ImageLoadError, SampleImage, load_image, sample_images,
                                sample_names, to_rgb)

__all__ = ["SAMPLES", "ImageFolder", "ImageLoadError", "SampleImage", "load_image", "sample_images",
           "sample_names", "to_rgb"]
