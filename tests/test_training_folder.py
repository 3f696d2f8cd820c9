"""scripts/training_folder.py: the bundled model's training folder, rebuilt the same way."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import script_module


@pytest.fixture
def sources(tmp_path):
    hq = tmp_path / "hq-structures"
    hq.mkdir()
    names = ("actin_pinn_gt30", "actin_stedactinfcn_axon4", "ccp_pinn_gt35", "er_pinn_gt35",
             "microtubules_pinn_gt30", "microtubules_nanopyx_storm_cell2_lr",
             "actin_pinn_gt05", "er_pinn_gt05", "microtubules_pinn_gt11")
    for i, name in enumerate(names):
        tifffile.imwrite(hq / f"{name}.tif", np.full((8, 8), i, np.uint16))
    (hq / "README.md").write_text("licences")
    demo = tmp_path / "train"
    demo.mkdir()
    tifffile.imwrite(demo / "nuclei_cells3d.tif",
                     np.arange(60, dtype=np.uint16)[:, None, None] * np.ones((1, 4, 4), np.uint16))
    tifffile.imwrite(demo / "timelapse.tif",
                     np.arange(25, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8))
    return hq, demo


def test_the_held_out_images_stay_out_and_the_nuclei_planes_are_the_fixed_ones(sources,
                                                                               tmp_path):
    script = script_module("training_folder")
    hq, demo = sources
    files = script.build(hq, demo, tmp_path / "out")
    names = [p.name for p in files]
    assert names == ["actin_pinn_gt05.tif", "er_pinn_gt05.tif", "microtubules_pinn_gt11.tif",
                     "nuclei_cells3d_z10.tif", "nuclei_cells3d_z15.tif",
                     "nuclei_cells3d_z30.tif", "nuclei_cells3d_z40.tif",
                     "timelapse_t0.tif", "timelapse_t12.tif", "timelapse_t24.tif"]
    assert (tmp_path / "out" / "er_pinn_gt05.tif").resolve() == (hq / "er_pinn_gt05.tif")
    assert tifffile.imread(tmp_path / "out" / "nuclei_cells3d_z30.tif")[0, 0] == 30
    assert tifffile.imread(tmp_path / "out" / "timelapse_t12.tif")[0, 0] == 12


def test_actin_twice_links_each_actin_image_again_and_an_existing_folder_is_refused(sources,
                                                                                   tmp_path):
    script = script_module("training_folder")
    hq, demo = sources
    files = script.build(hq, demo, tmp_path / "twice", actin_twice=True)
    again = (tmp_path / "twice" / "actin_pinn_gt05_again.tif")
    assert again in files and again.resolve() == hq / "actin_pinn_gt05.tif"
    assert len(files) == 11
    with pytest.raises(FileExistsError):
        script.build(hq, demo, tmp_path / "twice")
    with pytest.raises(SystemExit, match="held-out"):
        script.build(demo, demo, tmp_path / "elsewhere")
