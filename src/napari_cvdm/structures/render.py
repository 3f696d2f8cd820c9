"""Anti-aliased rendering: fluorophore positions in nanometres -> integrated pixel values.

Points are splatted bilinearly onto a grid ``supersample`` times finer than the output
(mass-conserving, so a sub-pixel shift does not change an object's total intensity), each
group of points is blurred by its own Gaussian cross-section (the object's physical width),
and the fine grid is box-summed into output pixels: every output pixel is the integral of
the fluorophore density over its area, without aliasing.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def sigma_from_fwhm(fwhm_nm: float) -> float:
    """The Gaussian sigma whose full width at half maximum is ``fwhm_nm``."""
    return fwhm_nm / FWHM_PER_SIGMA


class Canvas:
    """A field of view of ``shape`` pixels of ``pixel_size_nm`` that collects fluorophores.

    Coordinates are (y, x) in nanometres from the top-left corner of the field. The rendered
    image is a fluorophore density (per nm^2) averaged over each pixel, so images of the same
    structure at different pixel sizes have the same values where the structure is resolved.
    """

    def __init__(self, shape: tuple[int, int], pixel_size_nm: float, supersample: int = 4):
        self.shape = (int(shape[0]), int(shape[1]))
        self.pixel_size_nm = float(pixel_size_nm)
        self.supersample = int(supersample)
        self.fine_nm = self.pixel_size_nm / self.supersample
        self.fine_shape = (self.shape[0] * self.supersample, self.shape[1] * self.supersample)
        self._layers: dict[float, list] = {}
        self._dense = np.zeros(self.fine_shape, dtype=np.float32)

    @property
    def extent_nm(self) -> tuple[float, float]:
        """Height and width of the field of view in nanometres."""
        return self.shape[0] * self.pixel_size_nm, self.shape[1] * self.pixel_size_nm

    @property
    def point_spacing_nm(self) -> float:
        """Spacing of points along a line that renders as a continuous line."""
        return self.fine_nm / 2.0

    def contains(self, y_nm: np.ndarray, x_nm: np.ndarray, margin_nm: float = 0.0) -> np.ndarray:
        """Which points lie within the field, grown by ``margin_nm`` on every side."""
        height, width = self.extent_nm
        return ((y_nm > -margin_nm) & (y_nm < height + margin_nm)
                & (x_nm > -margin_nm) & (x_nm < width + margin_nm))

    def add_points(self, y_nm, x_nm, weights, fwhm_nm: float) -> None:
        """Add point masses ``weights`` at (y, x), seen through a Gaussian of ``fwhm_nm``."""
        y = np.asarray(y_nm, dtype=np.float64).ravel()
        x = np.asarray(x_nm, dtype=np.float64).ravel()
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), y.shape).ravel()
        self._layers.setdefault(round(float(fwhm_nm), 3), []).append((y, x, w))

    def _splat(self, parts) -> np.ndarray:
        """Bilinear, mass-conserving deposit of (y, x, weight) parts onto the fine grid."""
        y = np.concatenate([p[0] for p in parts]) / self.fine_nm + 0.5  # +1 border, -0.5 centre
        x = np.concatenate([p[1] for p in parts]) / self.fine_nm + 0.5
        w = np.concatenate([p[2] for p in parts])
        rows, cols = self.fine_shape[0] + 2, self.fine_shape[1] + 2  # a border of one pixel
        keep = (y >= 0) & (y < rows - 1) & (x >= 0) & (x < cols - 1)
        y, x, w = y[keep], x[keep], w[keep]
        y0, x0 = np.floor(y), np.floor(x)
        fy, fx = y - y0, x - x0
        corner = y0.astype(np.int64) * cols + x0.astype(np.int64)
        wy0, wy1 = w * (1.0 - fy), w * fy
        index = np.concatenate([corner, corner + 1, corner + cols, corner + cols + 1])
        mass = np.concatenate([wy0 * (1.0 - fx), wy0 * fx, wy1 * (1.0 - fx), wy1 * fx])
        splat = np.bincount(index, mass, minlength=rows * cols).reshape(rows, cols)
        return splat[1:-1, 1:-1]

    def fine_grid_nm(self, y_range_nm=None, x_range_nm=None):
        """Centres (y, x) in nm of the fine pixels, optionally only within (lo, hi) ranges.

        Returns two 1D coordinate arrays and the slices they occupy in the fine grid.
        """
        slices, coords = [], []
        for size, limits in zip(self.fine_shape, (y_range_nm, x_range_nm)):
            lo, hi = (0, size) if limits is None else (
                max(0, int(limits[0] / self.fine_nm)), min(size, int(limits[1] / self.fine_nm) + 1))
            lo = min(lo, hi)
            slices.append(slice(lo, hi))
            coords.append((np.arange(lo, hi) + 0.5) * self.fine_nm)
        return coords[0], coords[1], tuple(slices)

    def add_density(self, region: tuple[slice, slice], density: np.ndarray,
                    union: bool = False) -> None:
        """Add a smooth fluorophore density (per nm^2) sampled at the fine pixels of ``region``.

        ``union`` keeps the larger of the two densities instead of their sum, for flat objects
        that merge where they overlap (ER sheets) rather than stack.
        """
        mass = (density * self.fine_nm**2).astype(np.float32)
        if union:
            np.maximum(self._dense[region], mass, out=self._dense[region])
        else:
            self._dense[region] += mass

    def render(self, resolution_nm: float = 0.0) -> np.ndarray:
        """The image (H, W), float64: fluorophores per nm^2 averaged over each pixel.

        ``resolution_nm`` > 0 blurs the pixel-integrated image by a Gaussian of that FWHM,
        the resolution of the microscope that would record this field.
        """
        s = self.supersample
        rows, cols = self.shape
        dense = torch.from_numpy(self._dense).reshape(rows, s, cols, s)
        summed = dense.sum(dim=(1, 3), dtype=torch.float64)
        if self._layers:
            widths = list(self._layers)
            mass = torch.stack([torch.from_numpy(self._splat(self._layers[w]).astype(np.float32))
                                for w in widths])
            kernels = _blur_and_bin_kernels([sigma_from_fwhm(w) / self.fine_nm for w in widths], s)
            summed = summed + _blur_and_bin(mass, kernels, s).sum(dim=0, dtype=torch.float64)
        if resolution_nm > 0:
            summed = _gaussian_blur(summed, sigma_from_fwhm(resolution_nm) / self.pixel_size_nm)
        return (summed / self.pixel_size_nm**2).numpy()


def _blur_and_bin_kernels(sigmas_px: list[float], supersample: int) -> torch.Tensor:
    """1D kernels (L, K): each Gaussian convolved with the box of one output pixel.

    Applied with stride ``supersample``, a kernel blurs and box-sums in one pass; all share
    the longest one's length, centred, so that the layers run as one grouped convolution.
    """
    radius = max(1, max(math.ceil(3.5 * sigma) for sigma in sigmas_px))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    rows = []
    for sigma in sigmas_px:
        gauss = torch.exp(-0.5 * (t / max(sigma, 1e-3)) ** 2)
        gauss = gauss / gauss.sum()
        rows.append(_box(gauss, supersample))
    return torch.stack(rows).float()


def _box(gauss: torch.Tensor, width: int) -> torch.Tensor:
    """``gauss`` convolved with a box of ``width`` ones (length grows by width - 1)."""
    out = torch.zeros(len(gauss) + width - 1, dtype=gauss.dtype)
    for b in range(width):
        out[b:b + len(gauss)] += gauss
    return out


def _blur_and_bin(mass: torch.Tensor, kernels: torch.Tensor, s: int) -> torch.Tensor:
    """(L, s*H, s*W) fine layers -> (L, H, W): each blurred by its kernel and box-summed."""
    layers, length = kernels.shape
    radius = (length - s) // 2
    x = F.pad(mass[None], (radius, radius, radius, radius))
    x = F.conv2d(x, kernels.reshape(layers, 1, length, 1), stride=(s, 1), groups=layers)
    x = F.conv2d(x, kernels.reshape(layers, 1, 1, length), stride=(1, s), groups=layers)
    return x[0]


def _gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable, mass-preserving Gaussian blur (zero outside the field)."""
    if sigma_px < 0.1:
        return image
    radius = max(1, math.ceil(3.5 * sigma_px))
    r = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (r / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    x = image[None, None]
    x = F.conv2d(x, kernel.reshape(1, 1, -1, 1), padding=(radius, 0))
    x = F.conv2d(x, kernel.reshape(1, 1, 1, -1), padding=(0, radius))
    return x[0, 0]
