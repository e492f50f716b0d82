"""Decoding any image file into an 8-bit RGB `PIL.Image`, the same documented way for every source.

Conversion rules (applied in this order):

1. Multi-frame files (TIFF, GIF, DICOM cine, NIfTI volumes) give one frame: the first for TIFF/GIF, the middle
   frame of a DICOM series, the middle axial slice of a NIfTI volume (or the slice given).
2. EXIF orientation is applied, so a photo looks as a viewer shows it.
3. Bit depth: 1-bit becomes 0/255; 16-bit integer, 32-bit integer and float images are scaled linearly from their
   own finite min..max onto 0..255 (a constant image becomes 0); non-finite values become the minimum.
   DICOM uses RescaleSlope/Intercept, then its window (WindowCenter/Width) when present, else min..max, and
   MONOCHROME1 is inverted so that bright means dense everywhere.
4. Palette images expand through their palette; alpha (RGBA, LA, PA) is composited onto black, the usual
   background of medical images; CMYK, YCbCr, LAB and HSV convert through Pillow's colour conversions.
5. Greyscale is replicated into three channels.
"""

from __future__ import annotations

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


def load_image(path: str | Path, *, nifti_slice: int | None = None) -> Image.Image:
    """Read `path` (raster, DICOM or NIfTI) and return an 8-bit RGB image; raise `ImageError` with the reason."""
    name = str(path).lower()
    try:
        if name.endswith(DICOM_SUFFIXES):
            return array_to_rgb(_read_dicom(path))
        if name.endswith(NIFTI_SUFFIXES):
            return array_to_rgb(_read_nifti(path, nifti_slice))
        return _read_raster(path)
    except ImageError:
        raise
    except Exception as exc:  # any decoder failure becomes a per-sample error, never a crash
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{type(exc).__name__}: {reason}") from None


def _read_raster(path: str | Path) -> Image.Image:
    if Path(path).stat().st_size == 0:
        raise ImageError("empty file (0 bytes)")
    with Image.open(path) as img:
        img.seek(0)
        img.load()
        return to_rgb(img)


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


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Apply a DICOM linear window (PS3.3 C.11.2.1.2) and return 8-bit values."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    scaled = (values - (center - 0.5)) / max(width - 1, 1) + 0.5
    scaled = np.where(values <= low, 0.0, np.where(values > high, 1.0, scaled))
    return np.round(scaled * 255).astype(np.uint8)


def _read_dicom(path: str | Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise ImageError("DICOM support needs the 'dicom' extra: pip install 'medfrag-probe[dicom]'") from None
    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if frames > 1:
        pixels = pixels[frames // 2]
    if photometric.startswith("RGB") or photometric.startswith("YBR"):
        return pixels
    values = pixels.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1)
    values += float(getattr(ds, "RescaleIntercept", 0) or 0)
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    out = window(values, center, width) if center is not None and width else _scale_to_uint8(values)
    return 255 - out if photometric == "MONOCHROME1" else out


def _first(value):
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _read_nifti(path: str | Path, index: int | None) -> np.ndarray:
    try:
        import nibabel
    except ImportError:
        raise ImageError("NIfTI support needs the 'nifti' extra: pip install 'medfrag-probe[nifti]'") from None
    volume = np.asanyarray(nibabel.load(str(path)).dataobj)
    volume = np.squeeze(volume)
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
