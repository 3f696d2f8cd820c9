"""scripts/deepen_model.py: one more block per U-Net level, the same function before training."""

from __future__ import annotations

import pytest
import torch
from conftest import script_module

from napari_cvdm.model.config import CVDMConfig, UNetConfig
from napari_cvdm.model.cvdm import CVDM


@pytest.fixture(scope="module")
def deepen_module():
    return script_module("deepen_model")


def _trained_like(blocks: int) -> CVDM:
    """A model with a mean network and random weights everywhere (the zero-initialised output
    convolutions of a fresh model would make every comparison trivially equal)."""
    net = UNetConfig(8, (1, 2, 4), blocks, True)
    config = CVDMConfig(denoiser=net, mean_net=UNetConfig(8, (1, 2, 4), blocks, False),
                        schedule_net=UNetConfig(8, (1, 2), 1, False), prediction="v",
                        time_hidden=16, psf_conditioned=True)
    model = CVDM(config, metadata={"calibration": {"kind": "scale"}})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def _outputs(model, generator_seed=1):
    g = torch.Generator().manual_seed(generator_seed)
    out = {}
    for name in ("denoiser", "mean_net"):
        net = getattr(model, name)
        x = torch.randn(2, net.stem.in_channels, 32, 32, generator=g)
        cond = (torch.randn(2, net.cond_in.in_channels, 32, 32, generator=g)
                if net.cond_in is not None else None)
        with torch.no_grad():
            out[name] = net(x, cond) if cond is not None else net(x)
    return out


@pytest.mark.parametrize("blocks", [1, 2])
def test_the_deepened_model_computes_the_same_and_has_one_more_block_per_level(
        deepen_module, blocks):
    model = _trained_like(blocks)
    deep = deepen_module.deepen(model)
    assert deep.config.denoiser.blocks_per_level == blocks + 1
    assert deep.config.mean_net.blocks_per_level == blocks + 1
    assert deep.config.schedule_net == model.config.schedule_net
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in model.parameters())
    assert "calibration" not in deep.metadata and "calibration" in model.metadata
    before, after = _outputs(model), _outputs(deep)
    for name in before:
        assert before[name].abs().max() > 0.1
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-5)
    # the added blocks are live: changing one changes the output
    with torch.no_grad():
        deep.denoiser.up[0].blocks[1].conv2.weight.add_(0.05)
    assert not torch.allclose(_outputs(deep)["denoiser"], before["denoiser"], atol=1e-3)


def test_only_the_named_networks_are_deepened(deepen_module):
    model = _trained_like(1)
    deep = deepen_module.deepen(model, ("mean_net",))
    assert deep.config.denoiser == model.config.denoiser
    assert deep.config.mean_net.blocks_per_level == 2
    torch.testing.assert_close(_outputs(deep)["mean_net"], _outputs(model)["mean_net"],
                               rtol=1e-5, atol=1e-5)


def test_the_script_writes_a_model_file_that_loads(deepen_module, tmp_path):
    import napari_cvdm as nc

    model = _trained_like(1)
    model.metadata.pop("calibration")
    source = nc.save_model(model, tmp_path / "m.cvdm.safetensors")
    target = tmp_path / "deep.cvdm.safetensors"
    deepen_module.main([str(source), str(target), "--nets", "denoiser"])
    loaded = nc.load_model(target)
    assert loaded.config.denoiser.blocks_per_level == 2
    assert loaded.config.mean_net.blocks_per_level == 1
    torch.testing.assert_close(_outputs(loaded)["denoiser"], _outputs(model)["denoiser"],
                               rtol=1e-5, atol=1e-5)
