"""scripts/average_models.py: the weighted mean of two models' weights, with its provenance."""

from __future__ import annotations

import pytest
import torch
from conftest import script_module

import napari_cvdm as nc


@pytest.fixture(scope="module")
def soup():
    return script_module("average_models")


def _model(seed: int, **overrides) -> nc.CVDM:
    torch.manual_seed(seed)
    model = nc.CVDM(nc.CVDMConfig.preset("tiny", **overrides), metadata={"name": f"m{seed}"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.metadata["calibration"] = {"method": "scale", "scale": 2.0}
    return model


def test_the_weights_are_the_weighted_mean_and_the_file_says_so(soup, tmp_path):
    a, b = _model(1), _model(2)
    path_a = nc.save_model(a, tmp_path / "a.cvdm.safetensors")
    path_b = nc.save_model(b, tmp_path / "b.cvdm.safetensors")
    out = tmp_path / "ab.cvdm.safetensors"
    assert soup.main([str(path_a), str(path_b), str(out), "--weight", "0.25"]) == 0
    mixed = nc.load_model(out)
    for name, value in mixed.state_dict().items():
        expected = 0.75 * a.state_dict()[name] + 0.25 * b.state_dict()[name]
        torch.testing.assert_close(value, expected.to(value.dtype), rtol=1e-5, atol=1e-6)
    assert mixed.metadata["name"] == "m1" and "calibration" not in mixed.metadata
    assert mixed.metadata["training"]["averaged_with"]["weight"] == 0.25
    from napari_cvdm.cli.info import model_card

    assert "averaged with 'm2' (weight 0.25" in model_card(str(out))
    assert len(mixed.metadata["training"]["averaged_with"]["sha256"]) == 64
    with pytest.raises(FileExistsError):  # never replaces a file
        soup.main([str(path_a), str(path_b), str(out)])


def test_models_of_another_architecture_or_a_weight_outside_0_1_are_refused(soup):
    with pytest.raises(ValueError, match="differ in configuration"):
        soup.average(_model(1), _model(2, scale=3), 0.5)
    with pytest.raises(ValueError, match="weight"):
        soup.average(_model(1), _model(2), 1.5)
