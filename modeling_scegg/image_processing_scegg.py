"""Image processor of SC-EGG: pictures -> the `pixel_values` its ResNet region backbone reads.

SC-EGG's region features come from the common ZSL preprocessing, torchvision's
``Resize(448)`` (short side, bilinear) / ``CenterCrop(448)`` / ``ToTensor`` / ``Normalize``
(ImageNet mean and std) on images converted with PIL's ``convert("RGB")``. This processor
reproduces it pixel for pixel on transformers' PIL backend, where two details differ from the
generic transformers processors: the crop offset is ``round((size - crop) / 2)`` (Python's round,
half to even) as in torchvision's ``CenterCrop``, where transformers uses ``(size - crop) // 2``
(on about a quarter of real images the crops would sit one pixel apart); and PIL images of any
mode (grayscale, palette, CMYK, RGBA) go through ``convert("RGB")``, which drops transparency as
torchvision's image loader does, instead of compositing it onto white.

This file depends only on transformers, PIL and numpy, so it travels to the Hub as remote code.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PILImageResampling,
    SizeDict,
)

DEFAULT_IMAGE_SIZE = 448


class SCEGGImageProcessor(PilBackend):
    r"""
    Turns images into the `(batch, 3, crop, crop)` float32 `pixel_values` of
    [`SCEGGForImageClassification`]. With the defaults, a 448 x 448 crop gives the 14 x 14 = 196
    regions of ResNet-101's last stage; a model trained on other crops saves its own sizes here.

    Args:
        size (`dict[str, int]`, defaults to `{"shortest_edge": 448}`): the short side after resizing.
        crop_size (`dict[str, int]`, defaults to `{"height": 448, "width": 448}`): the centre crop.
        resample (`PILImageResampling`, defaults to `BILINEAR`): the resizing filter.
        image_mean, image_std (`list[float]`, default to ImageNet's): per-channel normalisation.
    """

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": DEFAULT_IMAGE_SIZE}
    default_to_square = False
    crop_size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def convert_to_rgb(self, image, input_data_format=None) -> np.ndarray:
        """PIL's own conversion for PIL images (alpha dropped, as torchvision's loader does);
        arrays go through transformers' conversion."""
        if isinstance(image, Image.Image):
            return np.array(image.convert("RGB"))
        return super().convert_to_rgb(image, input_data_format=input_data_format)

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs) -> np.ndarray:
        """torchvision's CenterCrop on a (C, H, W) array: offsets rounded half to even."""
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            raise ValueError(
                f"crop_size {size.height} x {size.width} is larger than the resized image {height} x {width}: "
                f"the short side ('size') must be at least the crop size"
            )
        top = int(round((height - size.height) / 2.0))
        left = int(round((width - size.width) / 2.0))
        return image[..., top:top + size.height, left:left + size.width]


__all__ = ["SCEGGImageProcessor"]
