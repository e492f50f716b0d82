"""Decoding any image file into an 8-bit RGB `PIL.Image`, the same documented way for every source.

Conversion rules (applied in this order):

1. Multi-frame files (TIFF, GIF, DICOM cine, NIfTI volumes) give one frame: the first for TIFF/GIF, the middle
   frame of a DICOM series, the middle axial slice of a NIfTI volume (or the slice given), taken after the volume is
   reoriented to RAS+ with `nibabel.as_closest_canonical`, so "axial" means axial whatever the stored axis order.
2. EXIF orientation is applied, so a photo looks as a viewer shows it.
3. Bit depth: 1-bit becomes 0/255; 16-bit integer, 32-bit integer and float images are scaled linearly from their
   own finite min..max onto 0..255 (a constant image becomes 0); non-finite values become the minimum.
   DICOM goes through pydicom's Modality LUT (rescale slope/intercept or a LUT), then its first VOI LUT (a VOI LUT
   sequence, else the window) scaled from the VOI's output range, else min..max; MONOCHROME1 is inverted so that
   bright means dense everywhere; palette colour goes through its LUT, YBR becomes RGB.
4. Palette images expand through their palette; alpha (RGBA, LA, PA) is composited onto black, the usual
   background of medical images; CMYK, YCbCr, LAB and HSV convert through Pillow's colour conversions.
5. Greyscale is replicated into three channels.

Very large images: given `keep_side` (extract and vqa pass twice the processor's largest input side, at least
1,024 px: `Adapter.decode_side`), a raster
whose shorter side is at least twice `keep_side` is shrunk by the largest integer factor that keeps its shorter side
>= `keep_side` (JPEG through Pillow's `draft`, which decodes at 1/2, 1/4 or 1/8 scale, then `Image.reduce`, a box
filter). The processor then still downsamples by two or more, so the model input barely changes, while a 9,000 x
9,000 scan never lives in memory as more than one decoded copy at a time. Images below the bound are untouched.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")
ALL_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES


class ImageError(Exception):
    """An image that cannot be decoded; the message is the reason recorded in the cache."""


def has_image_suffix(path: str | Path) -> bool:
    """Whether a file name looks like an image this module can read."""
    return str(path).lower().endswith(ALL_SUFFIXES)


def load_image(path: str | Path, *, nifti_slice: int | None = None, keep_side: int | None = None) -> Image.Image:
    """Read `path` (raster, DICOM or NIfTI) and return an 8-bit RGB image; raise `ImageError` with the reason.

    `keep_side` lets very large rasters decode at a reduced size whose shorter side stays >= `keep_side`."""
    name = str(path).lower()
    with _decoding():
        if name.endswith(DICOM_SUFFIXES):
            return array_to_rgb(_read_dicom(path))
        if name.endswith(NIFTI_SUFFIXES):
            return array_to_rgb(_read_nifti(path, nifti_slice))
        if Path(path).stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        return _read_raster(path, keep_side)


def load_image_bytes(data: bytes, *, keep_side: int | None = None) -> Image.Image:
    """Decode an encoded raster image held in memory (a Hugging Face dataset's image bytes) by the same rules."""
    import io

    with _decoding():
        if not data:
            raise ImageError("empty file (0 bytes)")
        return _read_raster(io.BytesIO(data), keep_side)


@contextlib.contextmanager
def _decoding():
    """Any decoder failure becomes an `ImageError` (a per-sample error with its reason), never a crash."""
    try:
        yield
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{type(exc).__name__}: {reason}") from None


def _read_raster(path, keep_side: int | None = None) -> Image.Image:
    """`path` is a file path or a binary file object."""
    with Image.open(path) as img:
        img.seek(0)
        factor = shrink_factor(img.size, keep_side)
        if factor > 1 and img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale: never the full-size pixels
            img.draft(img.mode, (img.width // factor, img.height // factor))
        img.load()
        return to_rgb(shrink(img, keep_side))


def shrink_factor(size: tuple[int, int], keep_side: int | None) -> int:
    """The largest integer factor that keeps the shorter side >= `keep_side` (1: leave the image as it is)."""
    if not keep_side:
        return 1
    factor = min(size) // keep_side
    return factor if factor >= 2 else 1


def shrink(img: Image.Image, keep_side: int | None) -> Image.Image:
    """Box-reduce `img` by `shrink_factor` (modes that Pillow cannot reduce are converted first)."""
    factor = shrink_factor(img.size, keep_side)
    if factor == 1:
        return img
    if img.mode in ("1", "P"):
        img = img.convert("RGBA" if img.mode == "P" else "L")
    try:
        return img.reduce(factor)
    except ValueError:  # e.g. I;16 and other raw modes: reduce the values as an array, then scale as usual
        arr = np.asarray(img)
        h, w = arr.shape[0] // factor * factor, arr.shape[1] // factor * factor
        blocks = arr[:h, :w].reshape(h // factor, factor, w // factor, factor, *arr.shape[2:])
        return array_to_rgb(blocks.mean(axis=(1, 3)).astype(np.float32))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB by the module's rules."""
    if img.width < 1 or img.height < 1:
        raise ImageError(f"image has no pixels ({img.width}x{img.height})")
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode == "1":
        return img.convert("L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode in ("L", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    return array_to_rgb(np.asarray(img))


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """Scale a 2-D (or H x W x 3/4) array of any dtype onto an 8-bit RGB image."""
    arr = np.asarray(array)
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(_scale_to_uint8(arr[..., :3]), "RGB")
    if arr.ndim != 2:
        raise ImageError(f"expected a 2-D image, got an array of shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    grey = arr if arr.dtype == np.uint8 else _scale_to_uint8(arr)
    return Image.fromarray(grey, "L").convert("RGB")


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(arr.shape, np.uint8)
    low, high = values[finite].min(), values[finite].max()
    values = np.where(finite, values, low)
    if high <= low:
        return np.zeros(arr.shape, np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _read_dicom(path: str | Path) -> np.ndarray:
    """Pixels as a viewer shows them, by pydicom's own transforms (PS3.3 C.11): Modality LUT (or rescale slope and
    intercept), then the first VOI LUT (a LUT sequence when present, else the window, linear or sigmoid), scaled from
    the VOI's output range onto 0..255; MONOCHROME1 inverted; palette colour through its LUT; YBR to RGB."""
    try:
        import pydicom
    except ImportError:
        raise ImageError("DICOM support needs the 'dicom' extra: pip install 'medfrag-probe[dicom]'") from None
    try:
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import (
            apply_color_lut,
            apply_modality_lut,
            apply_voi_lut,
            convert_color_space,
        )
    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip()
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else rgb
    if photometric.startswith("YBR") and int(pydicom.__version__.split(".")[0]) < 3:  # 3.x converts in pixel_array
        pixels = convert_color_space(pixels, photometric, "RGB")
    if pixels.ndim == 3:  # RGB (or converted YBR): scale by the stored bit depth, not by the image's own range
        return pixels if pixels.dtype == np.uint8 else np.round(pixels * (255.0 / (2 ** bits - 1))).astype(np.uint8)
    values = apply_modality_lut(pixels, ds)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)  # a LUT indexes integers (pydicom warns on float input)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        low, high = _voi_range(ds, values, apply_voi_lut)
        voi = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
        out = np.round(np.clip((voi - low) / max(high - low, 1e-12), 0, 1) * 255).astype(np.uint8)
    else:
        out = _scale_to_uint8(values.astype(np.float64))
    return 255 - out if photometric == "MONOCHROME1" else out


def _voi_range(ds, values: np.ndarray, apply_voi_lut) -> tuple[float, float]:
    """The output range of the first VOI transform: 0..2^n-1 of a LUT sequence (n from its descriptor), else the
    limits the window maps far-out values to."""
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        descriptor = item.LUTDescriptor
        n_bits = int(descriptor[2]) if int(descriptor[2]) else 16
        return 0.0, float(2 ** n_bits - 1)
    span = float(np.abs(values).max(initial=0)) * 4 + 1e9
    ends = apply_voi_lut(np.array([-span, span]), ds, index=0, prefer_lut=False).astype(np.float64)
    return float(ends.min()), float(ends.max())


def _read_nifti(path: str | Path, index: int | None) -> np.ndarray:
    try:
        import nibabel
    except ImportError:
        raise ImageError("NIfTI support needs the 'nifti' extra: pip install 'medfrag-probe[nifti]'") from None
    image = nibabel.load(str(path))
    if len(image.shape) >= 3:  # voxel axes to RAS+ (nibabel's closest canonical), so axis 2 is inferior-superior
        image = nibabel.as_closest_canonical(image)
    volume = np.squeeze(np.asanyarray(image.dataobj))
    if volume.ndim == 2:
        return volume
    if volume.ndim == 4:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise ImageError(f"NIfTI volume has unsupported shape {volume.shape}")
    depth = volume.shape[2]
    chosen = depth // 2 if index is None else index
    if not 0 <= chosen < depth:
        raise ImageError(f"NIfTI slice {chosen} out of range 0..{depth - 1}")
    return np.rot90(volume[:, :, chosen])
