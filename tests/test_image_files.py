"""TIFF reading robustness (issue 8): enormous declared sizes, odd pixel sizes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_cvdm.io import read_tiff


def test_a_tiff_declaring_an_enormous_image_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16))
    monkeypatch.setattr("napari_cvdm.image_files.max_image_bytes", lambda: 1000)
    with pytest.raises(ValueError, match="declares an image of"):
        read_tiff(path)


def test_a_tiff_with_a_zero_pixel_size_reads_without_one(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint16), resolution=(2.0, 2.0))
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["XResolution"].valueoffset
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 8] = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")  # 0/1 px
    path.write_bytes(bytes(raw))
    image = read_tiff(path)
    assert image.pixel_size is None and image.data.shape == (8, 8)
