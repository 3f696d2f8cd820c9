"""Training data: image pairs, high-quality images or generated structures, as random patches.

Sources are folders, in-memory arrays (napari layers) or the structure generators. Every
source image is percentile-normalised as a whole (as predict() does at inference), so the
model sees training patches exactly as it will see a user's image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .degradation import Degradation, simulate
from .image_names import is_cvdm_output, is_hidden, is_lsm, is_tiff
from .io import read_tiff
from .normalization import Normalization
from .resampling import upsample


def _tiffs(folder: str | Path, role: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"the {role} folder {folder} is a file; give the folder that "
                             "holds the images")
        raise ValueError(f"{role} folder not found: {folder}")
    # a folder named x.tif, a link loop: not images; LSM files (often beside their TIFF
    # export, and multichannel) are left to cvdm predict; napari-cvdm's own outputs (a
    # reconstruction, its std and variance written beside the images) are no targets
    files = sorted(p for p in folder.iterdir() if is_tiff(p) and not is_lsm(p)
                   and not is_hidden(p) and not is_cvdm_output(p) and p.is_file())
    if not files:
        nested = [p.name for p in folder.iterdir() if p.is_dir() and not is_hidden(p)
                  and _holds_tiffs(p)]
        where = (f"; subfolders are not searched, and {', '.join(sorted(nested)[:3])} "
                 "hold(s) TIFFs: give that folder" if nested else "")
        raise ValueError(f"no .tif/.tiff files in the {role} folder {folder} (other than "
                         f"hidden files and napari-cvdm outputs){where}")
    return files


def _holds_tiffs(folder: Path) -> bool:
    try:
        return any(is_tiff(p) for p in folder.iterdir())
    except OSError:  # unreadable: not said
        return False


def read_planes(path: Path, sizes: dict | None = None) -> list[np.ndarray]:
    """All Y, X planes of a TIFF as float32 (stacks are split into planes), blank ones too:
    a pair's planes must keep their indices (see `usable_pairs`). ``sizes``: where given,
    the file's X pixel size in nm (or None) is recorded under its name."""
    file = read_tiff(path)
    image = file.data
    axes = file.axes[-image.ndim:] if len(file.axes) >= image.ndim else ""
    if "C" in axes and image.shape[axes.index("C")] > 1:
        warnings.warn(f"{path.name}: its {image.shape[axes.index('C')]} channels are trained "
                      "on as separate images (save one channel per file to choose)",
                      stacklevel=3)
    if sizes is not None:
        from .domain import pixel_size_nm

        x = file.physical.get("X")
        sizes[path.name] = pixel_size_nm(x.size, x.unit) if x else None
    if image.ndim < 2:
        raise ValueError(f"{path} is not an image (shape {image.shape})")
    if image.dtype == np.bool_ or np.iscomplexobj(image):  # as predict() refuses them
        what = "boolean (a mask or labels)" if image.dtype == np.bool_ else "complex"
        raise ValueError(f"{path} is {what}, not intensities; save the image to train on")
    if image.ndim >= 3 and image.shape[-1] in (3, 4):
        raise ValueError(f"{path} looks like an RGB image (shape {image.shape}); "
                         "save the channel to train on as a single-channel TIFF")
    return float32_planes(image.reshape(-1, *image.shape[-2:]))


def float32_planes(planes: np.ndarray) -> list[np.ndarray]:
    """(N, Y, X) planes as float32 to train on. 32- and 64-bit integers far from 0 (an
    offset of 4.6e18) lose their differences in float32: each such plane is taken relative
    to its minimum (training normalises each image by percentiles, so an offset changes
    nothing else)."""
    if planes.dtype.kind in "iu" and planes.dtype.itemsize > 2:
        return [_from_minimum(p) for p in planes]
    return list(planes.astype(np.float32))


def _from_minimum(plane: np.ndarray) -> np.ndarray:
    """An integer plane less its minimum, as float32: subtracted as integers where the range
    fits (float64 keeps only 53 bits: an offset of 2**62 rounds to steps of 1024)."""
    low, high = int(plane.min()), int(plane.max())
    if plane.dtype == np.uint64:
        return (plane - np.uint64(low)).astype(np.float32)
    if high - low <= np.iinfo(np.int64).max:
        return (plane.astype(np.int64) - low).astype(np.float32)
    return (plane.astype(np.float64) - float(low)).astype(np.float32)


@dataclass
class Pair:
    """One training image: normalised low-quality input and high-quality target."""

    lq: np.ndarray  # [-1, 1]-normalised, low-quality grid
    hq: np.ndarray  # [-1, 1]-normalised, high-quality grid
    name: str
    psf_sigma: float | None = None  # the simulated blur (high-quality pixels); None if real


def _pair_scale(lq: np.ndarray, hq: np.ndarray, name: str) -> int:
    ratio_y, ratio_x = hq.shape[0] / lq.shape[0], hq.shape[1] / lq.shape[1]
    if ratio_y != ratio_x or ratio_y != int(ratio_y) or ratio_y < 1:
        raise ValueError(f"{name}: high-quality shape {hq.shape} is not an integer "
                         f"multiple of the low-quality shape {lq.shape}")
    return int(ratio_y)


def _make_pairs(planes: list[tuple[np.ndarray, np.ndarray, str]]) -> tuple[list[Pair], int]:
    """Normalised pairs and their one scale factor from (lq, hq, name) planes."""
    pairs, scales = [], set()
    for lq, hq, name in planes:
        scales.add(_pair_scale(lq, hq, name))
        pairs.append(Pair(Normalization.fit(lq).apply(lq), Normalization.fit(hq).apply(hq), name))
    if len(scales) != 1:
        raise ValueError(f"the pairs have different scale factors: {sorted(scales)}")
    return pairs, scales.pop()


def _left_out(what: str, names) -> None:
    """A warning for training images a folder holds but the run leaves out (the command
    line says it as "cvdm train: warning: ..."; before, they were dropped without a word)."""
    names = list(names)
    listed = f": {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}" if names else ""
    warnings.warn(f"left out of training: {what}{listed}", stacklevel=3)


def load_pairs(lq_dir: str | Path, hq_dir: str | Path) -> tuple[list[Pair], int]:
    """Pairs matched by file name; returns them and the (checked) integer scale factor."""
    if Path(lq_dir).resolve() == Path(hq_dir).resolve():
        raise ValueError(f"the low- and high-quality folders are one folder ({lq_dir}): each "
                         "image would be its own target")
    lq_files = {p.stem: p for p in _tiffs(lq_dir, "low-quality")}
    hq_files = {p.stem: p for p in _tiffs(hq_dir, "high-quality")}
    common = sorted(set(lq_files) & set(hq_files))
    if not common:
        raise ValueError(f"no file names in common between {lq_dir} and {hq_dir}; pairs are "
                         "matched by name (e.g. LQ/cell01.tif with HQ/cell01.tif)")
    alone = sorted(set(lq_files) ^ set(hq_files))
    if alone:
        _left_out(f"{len(alone)} file(s) with no partner of the same name in the other "
                  "folder", alone)
    planes, lq_sizes, hq_sizes = [], {}, {}
    for stem in common:
        lq_planes = read_planes(lq_files[stem], lq_sizes)
        hq_planes = read_planes(hq_files[stem], hq_sizes)
        found = usable_pairs(lq_planes, hq_planes, stem, required=False)
        if len(found) < len(lq_planes):
            _left_out(f"{stem}: {len(lq_planes) - len(found)} of its {len(lq_planes)} "
                      "plane(s), empty, constant or not finite in either image", ())
        planes += found
    if not planes:
        raise ValueError(f"no pair in {lq_dir} and {hq_dir} has a plane with structure in "
                         "both images (each is empty, constant or not finite)")
    if all(lq.shape == hq.shape and np.array_equal(lq, hq) for lq, hq, _ in planes):
        raise ValueError(f"every image in {lq_dir} is the same as its partner in {hq_dir} (a "
                         "copy of one folder?): each image would be its own target")
    pairs, scale = _make_pairs(planes)
    _warn_about_pixel_sizes(common, lq_files, hq_files, lq_sizes, hq_sizes, scale)
    return pairs, scale


def _warn_about_pixel_sizes(stems, lq_files, hq_files, lq_sizes, hq_sizes, scale) -> None:
    """Say which pairs' recorded pixel sizes (both known) do not differ by the scale their
    shapes give: a low-quality image cropped from its target, not the same field sampled
    more coarsely, trains the model to enlarge what it should not."""
    odd = []
    for stem in stems:
        lq, hq = lq_sizes.get(lq_files[stem].name), hq_sizes.get(hq_files[stem].name)
        if lq and hq and abs(lq / hq / scale - 1) > 0.1:
            odd.append(f"{stem} ({lq:g} / {hq:g} nm)")
    if odd:
        warnings.warn(f"the pixel sizes of {len(odd)} pair(s) do not differ by the x{scale} "
                      f"their shapes give: {', '.join(odd[:5])}{', ...' if len(odd) > 5 else ''}"
                      f"; a low-quality image should show the same field as its target, "
                      f"sampled {scale} times more coarsely (not a crop of it)", stacklevel=3)


def plane_problem(plane: np.ndarray, name: str) -> str | None:
    """Why one Y, X plane of a training image says nothing to learn from (NaN or infinite
    pixels, one value everywhere), or None: such planes are left out."""
    low, high = float(np.min(plane)), float(np.max(plane))
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{name!r} has NaN or infinite pixels; replace them first"
    if not high > low:
        return f"{name!r} is constant ({low:g} everywhere): there is no structure to learn"
    return None


def _array_planes(image, name: str) -> list[np.ndarray]:
    """The usable Y, X planes of an in-memory image (a napari layer's data) as float32."""
    array = np.asarray(image)
    if array.ndim < 2 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} is not a real-valued image (shape {array.shape}, "
                         f"dtype {array.dtype})")
    if array.ndim >= 3 and array.shape[-1] in (3, 4) and array.shape[-2] > 4:
        raise ValueError(f"{name} looks like an RGB image (shape {array.shape}); give the "
                         "channel to train on as a single-channel image")
    return float32_planes(array.reshape(-1, *array.shape[-2:]))


def usable_planes(planes: list[np.ndarray], name: str) -> list[tuple[int, np.ndarray]]:
    """(index, plane) of the planes with something to learn from (see `plane_problem`)."""
    return [(i, p) for i, p in enumerate(planes) if plane_problem(p, name) is None]


def usable_pairs(lq_planes: list[np.ndarray], hq_planes: list[np.ndarray],
                 name: str, required: bool = True) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(lq, hq, name[i]) for the planes i where both stacks have something to learn from.
    Blank planes are left out as pairs, so plane i of the input stays with plane i of the
    target wherever the two stacks' blank planes sit. ``required``: ValueError where none
    is left (one of several files of a folder may be blank)."""
    if len(lq_planes) != len(hq_planes):
        raise ValueError(f"{name}: {len(lq_planes)} low-quality planes but "
                         f"{len(hq_planes)} high-quality planes")
    out = [(lq, hq, f"{name}[{i}]") for i, (lq, hq) in enumerate(zip(lq_planes, hq_planes))
           if plane_problem(lq, name) is None and plane_problem(hq, name) is None]
    if not out and required:
        raise ValueError(f"{name}: no plane has structure in both the low- and the "
                         "high-quality image (each is empty, constant or not finite)")
    return out


def pairs_from_arrays(items) -> tuple[list[Pair], int]:
    """Pairs from in-memory (low-quality, high-quality) images; the scale from their shapes."""
    planes = []
    for k, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"pair {k} must be (low-quality image, high-quality image), not "
                             f"{type(item).__name__}"
                             f"{f' of {len(item)}' if isinstance(item, (tuple, list)) else ''}")
        lq, hq = item
        planes += usable_pairs(_array_planes(lq, f"pair {k} input"),
                               _array_planes(hq, f"pair {k} target"), f"pair{k}")
    if not planes:
        raise ValueError("no image pairs given")
    return _make_pairs(planes)


def unit_range(plane: np.ndarray) -> np.ndarray:
    """A high-quality plane scaled to [0, 1] by percentiles (the simulator's input)."""
    return np.clip((Normalization.fit(plane).apply(plane) + 1) / 2, 0, None).astype(np.float32)


def hq_from_arrays(images) -> list[tuple[np.ndarray, str]]:
    """High-quality in-memory images (e.g. napari layers) as [0, 1] planes with names."""
    out, reasons = [], []
    for k, image in enumerate(images):
        planes = _array_planes(image, f"image {k}")
        out += [(unit_range(p), f"image{k}[{i}]") for i, p in usable_planes(planes, f"image {k}")]
        reasons += [plane_problem(p, f"image {k}") for p in planes[:1]]
    if not out:
        raise ValueError(_nothing_to_learn("the high-quality images", reasons))
    return out


def _nothing_to_learn(what: str, reasons: list[str | None]) -> str:
    """The message for training images none of whose planes can be learned from."""
    if not reasons:
        return f"{what}: none given"
    return f"{what} have no plane to learn from: {next((r for r in reasons if r), 'empty')}"


def load_hq(hq_dir: str | Path) -> list[tuple[np.ndarray, str]]:
    """High-quality planes of a folder's TIFFs, scaled to [0, 1] by percentiles."""
    out, reasons = [], []
    files = _tiffs(hq_dir, "high-quality")
    sizes: dict[str, float | None] = {}
    for path in files:
        planes = read_planes(path, sizes)
        usable = usable_planes(planes, path.name)
        if usable and len(usable) < len(planes):
            _left_out(f"{path.name}: {len(planes) - len(usable)} of its {len(planes)} "
                      "plane(s), empty, constant or not finite", ())
        elif not usable and len(files) > 1:  # alone, it is refused (below) with why
            _left_out(f"{path.name}: {plane_problem(planes[0], path.name)}", ())
        out += [(unit_range(p), f"{path.stem}[{i}]") for i, p in usable]
        reasons += [plane_problem(p, path.name) for p in planes[:1]]
    if not out:
        raise ValueError(_nothing_to_learn(f"the images in {hq_dir}", reasons))
    _note_pixel_sizes(sizes)
    return out


def _note_pixel_sizes(sizes: dict[str, float | None], spread: float = 1.25) -> None:
    """A warning where a folder's images have pixel sizes more than ``spread`` apart: the
    simulated blur is in pixels, so one PSF width means different optics on each (napari's
    training says the same of layers)."""
    known = {name: nm for name, nm in sizes.items() if nm}
    if len(known) > 1 and max(known.values()) > spread * min(known.values()):
        small = min(known, key=known.get)
        large = max(known, key=known.get)
        warnings.warn(f"the training images have different pixel sizes ({small}: "
                      f"{known[small]:g} nm, {large}: {known[large]:g} nm); the simulated "
                      "blur is in pixels, so one PSF width means different optics on each: "
                      "resample them to one pixel size", stacklevel=3)


def simulate_pairs(images: list[tuple[np.ndarray, str]], degradation: Degradation,
                   generator: torch.Generator) -> list[Pair]:
    """Fresh simulated low-quality versions of each [0, 1] high-quality plane."""
    pairs = []
    s = degradation.scale
    for hq01, name in images:
        h, w = (hq01.shape[0] // s) * s, (hq01.shape[1] // s) * s
        hq01 = hq01[:h, :w]
        lq, sigma = simulate(torch.from_numpy(np.ascontiguousarray(hq01))[None, None],
                             degradation, generator, return_sigmas=True)
        lq = lq[0, 0].numpy()
        pairs.append(Pair(Normalization.fit(lq).apply(lq), (hq01 * 2 - 1).astype(np.float32),
                          name, float(sigma[0])))
    return pairs


class PatchSampler:
    """Random aligned patches with flips and 90-degree rotations, as (x, y) batches."""

    def __init__(self, pairs: list[Pair], scale: int, patch_size: int, generator: torch.Generator,
                 augment: bool = True):
        if patch_size % scale:
            raise ValueError(f"the patch size {patch_size} must be a multiple of the scale "
                             f"{scale}; choose another patch size (--patch-size)")
        check_patch_fits([], [(p.name, p.hq.shape) for p in pairs], patch_size)
        self.pairs, self.scale, self.patch = pairs, scale, patch_size
        self.generator, self.augment = generator, augment

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _crop(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        s, p = self.scale, self.patch // self.scale
        lq_h, lq_w = pair.lq.shape
        best = None
        for _ in range(5):  # prefer patches with structure over empty background
            y, x = self._randint(lq_h - p + 1), self._randint(lq_w - p + 1)
            lq = pair.lq[y:y + p, x:x + p]
            hq = pair.hq[y * s:(y + p) * s, x * s:(x + p) * s]
            spread = float(hq.std())
            if best is None or spread > best[0]:
                best = (spread, lq, hq)
            if spread > 0.1:
                break
        return best[1], best[2]

    def batch(self, size: int, with_psf: bool = False):
        """(x, y) batches; ``with_psf``: (x, y, psf_sigma) with each patch's PSF width (B,)
        (NaN for a real pair, whose blur is not known)."""
        lqs, hqs, sigmas = [], [], []
        for _ in range(size):
            pair = self.pairs[self._randint(len(self.pairs))]
            sigmas.append(float("nan") if pair.psf_sigma is None else pair.psf_sigma)
            lq, hq = self._crop(pair)
            lq, hq = torch.from_numpy(np.ascontiguousarray(lq)), torch.from_numpy(np.ascontiguousarray(hq))
            if self.augment:
                k = self._randint(4)
                lq, hq = torch.rot90(lq, k), torch.rot90(hq, k)
                if self._randint(2):
                    lq, hq = lq.flip(-1), hq.flip(-1)
            lqs.append(lq)
            hqs.append(hq)
        lq = torch.stack(lqs)[:, None].float()
        hq = torch.stack(hqs)[:, None].float()
        if with_psf:
            return upsample(lq, self.scale), hq, torch.tensor(sigmas, dtype=torch.float32)
        return upsample(lq, self.scale), hq


def _split_whole(items: list, fraction: float) -> tuple[list, list]:
    """Hold out evenly spaced whole items (deterministic: the same ones every run)."""
    # at least one held out, and at least one left to train on (0.95 of 6 held out all)
    n_val = min(max(1, int(round(len(items) * fraction))), len(items) - 1)
    step = len(items) / n_val
    val_idx = {int(i * step) for i in range(n_val)}
    return ([x for i, x in enumerate(items) if i not in val_idx],
            [x for i, x in enumerate(items) if i in val_idx])


def split_validation(pairs: list[Pair], fraction: float,
                     min_size: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole images when there are enough, else the bottom strip of each image.

    A strip is at least ``min_size`` high-quality rows tall where the image allows it.
    """
    if len(pairs) >= 5:
        return _split_whole(pairs, fraction)
    train, val = [], []
    for p in pairs:
        lq_h = p.lq.shape[0]
        s = p.hq.shape[0] // lq_h
        strip = max(int(round(lq_h * fraction)), -(-min_size // s))
        cut = max(1, min(lq_h - strip, lq_h - 1))
        train.append(Pair(p.lq[:cut], p.hq[:cut * s], p.name))
        val.append(Pair(p.lq[cut:], p.hq[cut * s:], p.name + "/val"))
    return train, val


def check_patch_fits(whole: list[tuple[str, tuple[int, ...]]],
                     train: list[tuple[str, tuple[int, ...]]], patch_size: int) -> None:
    """ValueError naming the cause when a training image cannot give a patch: the image
    itself is smaller than the patch, or the part left after its validation strip is.
    ``whole``/``train``: (name, high-quality shape) before and after the validation split
    (images held out whole for validation may be smaller: their patches shrink)."""
    sizes = dict(whole)
    small, cut = [], []
    for name, shape in train:
        if min(shape[-2:]) >= patch_size:
            continue
        full = sizes.get(name, shape)
        if min(full[-2:]) < patch_size:
            small.append(f"{name} ({full[-2]} x {full[-1]})")
        else:
            cut.append(f"{name} ({shape[-2]} rows)")
    if small:
        raise ValueError(f"images smaller than the patch size {patch_size}: {small[:3]}; use "
                         "a smaller patch size (--patch-size)")
    if cut:
        raise ValueError(f"after its validation strip (at least one patch tall), too little of "
                         f"{cut[:3]} is left to train on: less than the patch size "
                         f"{patch_size}; lower the patch size (--patch-size) or the validation "
                         "fraction (--validation-fraction), give images at least twice the "
                         "patch size tall, or give 5 or more images (whole images are held "
                         "out then)")


def split_images(images: list[tuple[np.ndarray, str]], fraction: float, min_size: int = 0):
    """High-quality images split like ``split_validation``: whole images, or bottom strips."""
    if len(images) >= 5:
        return _split_whole(images, fraction)
    train, val = [], []
    for image, name in images:
        h = image.shape[0]
        strip = max(int(round(h * fraction)), min_size)
        cut = max(1, min(h - strip, h - 1))
        train.append((image[:cut], name))
        val.append((image[cut:], name + "/val"))
    return train, val


class SyntheticPool:
    """Generated structure images (``structures.generate``), a few replaced at each refresh.

    Generating is slower than simulating optics, so the pool keeps ``count`` images and
    swaps ``turnover`` of them for new ones at each refresh: the model never sees a fixed set.
    """

    def __init__(self, kinds, count: int, size: int, seed: int,
                 pixel_size_nm: tuple[float, float] = (25.0, 40.0), turnover: int = 4,
                 resolution_nm: tuple[float, float] = (0.0, 120.0)):
        from . import structures

        unknown = set(kinds) - set(structures.STRUCTURES)
        if unknown or not kinds:
            raise ValueError(f"unknown structure kinds {sorted(unknown) or '(none)'}; "
                             f"choose from {', '.join(structures.STRUCTURES)}")
        self.kinds, self.size, self.turnover = tuple(kinds), int(size), int(turnover)
        # The targets' own resolution varies like real ones: SMLM (~0), STED, SIM (~110 nm).
        self.pixel_size_nm, self.resolution_nm = pixel_size_nm, resolution_nm
        self.rng = np.random.default_rng(seed)
        self.serial = 0
        self.images = [self._new() for _ in range(count)]

    def _new(self) -> tuple[np.ndarray, str]:
        from . import structures

        kind = self.kinds[int(self.rng.integers(len(self.kinds)))]
        pixel = float(self.rng.uniform(*self.pixel_size_nm))
        resolution = float(self.rng.uniform(*self.resolution_nm))
        image = structures.generate(kind, (self.size, self.size), pixel, self.rng,
                                    resolution_nm=resolution)
        self.serial += 1
        # Percentile-normalised like every real image, so all sources share one scale.
        return unit_range(image), f"synthetic-{kind}-{self.serial:05d}"

    def refresh(self) -> None:
        for _ in range(min(self.turnover, len(self.images))):
            self.images[int(self.rng.integers(len(self.images)))] = self._new()
