"""CIFAR-10-C corruptions (Hendrycks and Dietterich, ICLR 2019), reimplemented with numpy,
scipy and PIL from the paper's published formulas and severity constants for 32x32 images:
Gaussian noise, defocus blur, contrast, brightness and JPEG compression. Benchmark and test
support only: the product never corrupts images. Each takes uint8 [N, H, W, 3] and returns
uint8 (truncated, as the original's ``np.uint8`` cast does)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage

SEVERITIES = (1, 2, 3, 4, 5)
NOISE_SCALE = (0.04, 0.06, 0.08, 0.09, 0.10)
DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # disk radius, alias blur
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
JPEG_QUALITY = (80, 65, 58, 50, 40)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation c (in 0-1 units)."""
    scale = NOISE_SCALE[severity - 1]
    return _to_uint8(images / 255.0 + rng.normal(0.0, scale, images.shape))


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """OpenCV's GaussianBlur taps for an odd ``size``."""
    offsets = np.arange(size) - size // 2
    taps = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """A disk of ``radius`` on a 17x17 grid, normalised, smoothed by a 3x3 Gaussian of
    ``alias_blur`` (the original's anti-aliasing step)."""
    grid = np.arange(-8, 9)
    x, y = np.meshgrid(grid, grid)
    disk = ((x**2 + y**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = gaussian_kernel_1d(3, alias_blur)
    smoothed = ndimage.convolve1d(disk, taps, axis=0, mode="mirror")
    return ndimage.convolve1d(smoothed, taps, axis=1, mode="mirror")


def defocus_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Each channel convolved with the defocus kernel (borders reflected, as OpenCV's
    filter2D does)."""
    del rng  # deterministic
    kernel = defocus_kernel(*DEFOCUS[severity - 1])
    kernel = kernel[None, :, :, None]
    return _to_uint8(ndimage.correlate(images / 255.0, kernel, mode="mirror"))


def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Each channel pulled towards its own mean by the factor c."""
    del rng
    pixels = images / 255.0
    means = pixels.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((pixels - means) * CONTRAST[severity - 1] + means)


def brightness(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The HSV value raised by c."""
    del rng
    hsv = rgb_to_hsv(images / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + BRIGHTNESS[severity - 1], 0.0, 1.0)
    return _to_uint8(hsv_to_rgb(hsv))


def jpeg_compression(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Encoded and decoded as JPEG at quality c."""
    del rng
    quality = JPEG_QUALITY[severity - 1]
    out = np.empty_like(images)
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[index] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "defocus_blur": defocus_blur,
    "contrast": contrast,
    "brightness": brightness,
    "jpeg_compression": jpeg_compression,
}
