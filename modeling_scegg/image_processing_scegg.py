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

Every path that reads a picture (``scegg predict``, image-folder training and extraction, both
pipelines) reads it with :func:`load_picture`, so they all hand the backbone the same pixels:

* formats are checked on the content, not the file name, against :data:`PICTURE_FORMATS` (what
  cameras and datasets use); nothing PIL would hand to an external program (PostScript / EPS to
  Ghostscript) is ever opened;
* the size is checked on the header, before decoding: each side at least :data:`MIN_PICTURE_SIDE`,
  at most :data:`MAX_PICTURE_PIXELS` pixels (PIL's decompression-bomb limit) and a long side at most
  :data:`MAX_PICTURE_ASPECT` times the short one (a 100000 x 32 strip would otherwise be resized
  to gigabytes); PIL's limits on compressed PNG text chunks stay in force;
* a JPEG more than four times the processor's resize size is decoded at a reduced scale (libjpeg's
  DCT scaling, PIL's ``draft``) whose short side stays at least twice that size, so a 40-megapixel
  photo is never held whole; other formats, which cannot decode at a reduced scale, are reduced
  right after decoding by a power-of-two factor that keeps the short side at least four times the
  resize size (PIL's ``reduce``, a box filter). The bilinear resize that follows differs from
  resizing the full picture by about a quarter of a grey level on average (a reduction to just
  above the resize size would differ by up to 16);
* the EXIF orientation is applied (``ImageOps.exif_transpose``), as transformers' ``load_image``
  does; 16-bit and 32-bit integer greyscale (PNG, TIFF) is scaled to 8 bits (65535 -> 255) instead
  of clipped to white; floating-point pictures are refused;
* anything that goes wrong raises :class:`UnusableImage` with the reason.

This file depends only on transformers, PIL and numpy, so it travels to the Hub as remote code.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PILImageResampling,
    SizeDict,
)

DEFAULT_IMAGE_SIZE = 448
MIN_PICTURE_SIDE = 32  # below it nothing is left to see once upscaled to the crop
MAX_PICTURE_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS default (its decompression-bomb limit)
MAX_PICTURE_ASPECT = 20  # long side / short side: wide panoramas pass, pathological strips do not
PICTURE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # PIL opens cameras' multi-picture JPEGs as MPO
MAX_PROCESSOR_SIDE = 2048  # the largest resize / crop side a processor may ask for (ResNet-101 is trained at 224-448)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK")

PictureSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]


class UnusableImage(ValueError):
    """A picture that cannot be classified; the message is the reason given in its row."""


def check_picture_size(width: int, height: int) -> None:
    """Refuse, from the header alone, a picture too small to see or too large to decode safely."""
    if min(width, height) < MIN_PICTURE_SIDE:
        raise UnusableImage(f"too small: {width} x {height} pixels (each side needs at least {MIN_PICTURE_SIDE})")
    if width * height > MAX_PICTURE_PIXELS:
        raise UnusableImage(f"too large: {width} x {height} = {width * height / 1e6:.0f} megapixels "
                            f"(at most {MAX_PICTURE_PIXELS / 1e6:.0f} are decoded)")
    if max(width, height) > MAX_PICTURE_ASPECT * min(width, height):
        raise UnusableImage(f"too elongated: {width} x {height} pixels (the long side may be at most "
                            f"{MAX_PICTURE_ASPECT} times the short one)")


def picture_to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB the way torchvision's loader makes it (``convert("RGB")``), except that 16-bit and
    32-bit integer greyscale is scaled to 8 bits first: PIL's conversion clips it, so a mid-grey
    16-bit PNG would turn pure white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnusableImage(f"{image.mode} pixels outside 0..65535: no 8-bit scale is known for them")
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    elif image.mode == "F":
        raise UnusableImage("floating-point pixels (PIL mode F): no 8-bit scale is known for them")
    return image.convert("RGB")


def load_picture(source: PictureSource, shortest_edge: int | None = None) -> Image.Image:
    """The upright 8-bit RGB picture from a path, bytes, a binary file or a PIL image (see the
    module docstring), or :class:`UnusableImage` saying why not. ``shortest_edge`` (the processor's
    resize size) lets a large JPEG decode at a reduced scale whose short side stays at least twice that."""
    if isinstance(source, Image.Image):
        if source.format is not None and source.format not in (*PICTURE_FORMATS, "MPO"):
            raise UnusableImage(f"{source.format} pictures are not accepted (formats: {', '.join(PICTURE_FORMATS)})")
        return _decode(source, None, owned=False)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise UnusableImage("no such file")
        if os.path.getsize(source) == 0:
            raise UnusableImage("empty file (0 bytes)")
    elif isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_picture_size says it better
            image = Image.open(source, formats=PICTURE_FORMATS)
    except Image.DecompressionBombError as error:
        raise UnusableImage(f"too large to decode safely ({error})") from error
    except UnidentifiedImageError as error:
        raise UnusableImage(f"not a picture in an accepted format ({', '.join(PICTURE_FORMATS)})") from error
    except Exception as error:
        raise UnusableImage(f"unreadable image data ({error})") from error
    with image:
        return _decode(image, shortest_edge, owned=True)


def _decode(image: Image.Image, shortest_edge: int | None, owned: bool) -> Image.Image:
    """Size check on the header, then (bounded) decoding, EXIF orientation and RGB conversion; an
    image we opened (`owned`) is turned upright in place, a caller's is left as it was."""
    check_picture_size(*image.size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_picture_size bounds the size
            if shortest_edge and image.format in ("JPEG", "MPO"):
                image.draft(None, (2 * shortest_edge, 2 * shortest_edge))
            image.load()
            if not owned:
                return picture_to_rgb(ImageOps.exif_transpose(image))
            ImageOps.exif_transpose(image, in_place=True)  # a full-size copy fewer
            return picture_to_rgb(_reduced(image, shortest_edge))
    except UnusableImage:
        raise
    except Image.DecompressionBombError as error:
        raise UnusableImage(f"too large to decode safely ({error})") from error
    except Exception as error:  # truncated or corrupt data, a text chunk over PIL's limits, bad EXIF...
        raise UnusableImage(f"unreadable image data ({error})") from error


def _reduced(image: Image.Image, shortest_edge: int | None) -> Image.Image:
    """A decoded picture over eight times the resize size, reduced by the largest power-of-two
    factor (box filter, PIL's ``reduce``) that keeps its short side at least four times that size:
    for the formats that cannot decode at a reduced scale as JPEG does. (Non-power-of-two factors
    and smaller margins moved the pixels after preprocessing by several grey levels.)"""
    factor = min(image.size) // (4 * shortest_edge) if shortest_edge else 0
    if factor < 2 or image.mode not in _REDUCIBLE_MODES:
        return image
    return image.reduce(1 << (factor.bit_length() - 1))


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

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Refuse, when the processor is built or loaded, sizes that would exhaust memory on the
        first picture (a preprocessor_config.json asking for a 10^6-pixel short side)."""
        for name in ("size", "crop_size"):
            sizes = getattr(self, name) or {}
            for key in ("height", "width", "shortest_edge", "longest_edge"):
                value = sizes.get(key) if isinstance(sizes, dict) else getattr(sizes, key, None)
                if value is not None and not 1 <= int(value) <= MAX_PROCESSOR_SIDE:
                    raise ValueError(f"SCEGGImageProcessor.{name}[{key!r}] = {value} is outside 1..{MAX_PROCESSOR_SIDE} "
                                     f"pixels; fix preprocessor_config.json (ResNet-101 region features use 224-448)")

    @property
    def decode_size(self) -> int | None:
        """The short side pictures are resized to, which bounds the scale :func:`load_picture` may
        decode a large JPEG at."""
        return self.size.shortest_edge or (min(self.size.height, self.size.width) if self.size.height else None)

    def convert_to_rgb(self, image, input_data_format=None) -> np.ndarray:
        """:func:`picture_to_rgb` for PIL images (alpha dropped, as torchvision's loader does; 16-bit
        greyscale scaled); arrays go through transformers' conversion."""
        if isinstance(image, Image.Image):
            return np.array(image if image.mode == "RGB" else picture_to_rgb(image))
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


__all__ = ["MAX_PICTURE_ASPECT", "MAX_PICTURE_PIXELS", "MAX_PROCESSOR_SIDE", "MIN_PICTURE_SIDE", "PICTURE_FORMATS",
           "SCEGGImageProcessor", "UnusableImage", "check_picture_size", "load_picture", "picture_to_rgb"]
