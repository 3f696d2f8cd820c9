"""train(): fit a CVDM on image pairs or on high-quality images with simulated optics.

Adam on the total loss of SPEC section 1, an exponential moving average of the weights
(the model that is saved), a held-out validation set scored by PSNR and SSIM at intervals,
atomic checkpoints in the model-file format plus a training-state file for ``resume``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import PatchSampler, load_hq, load_pairs, simulate_pairs, split_validation
from .degradation import Degradation
from .devices import resolve_device
from .errors import Cancelled, TrainingDiverged
from .inference import _cancel_requested
from .io import atomic_write, load_model, save_model
from .metrics import psnr, ssim
from .model.config import CVDMConfig
from .model.cvdm import CVDM
from .normalization import DEFAULT_PERCENTILES
from .sampling import sample

STATE_SUFFIX = ".train-state.safetensors"
SIMULATION_REFRESH = 100  # steps between fresh simulated noise draws of the training set


@dataclass
class TrainingSettings:
    preset: str = "small"
    steps: int = 1000
    batch_size: int = 8
    patch_size: int = 64
    learning_rate: float | None = None   # None: the paper's 1e-4 for "paper", 2e-4 else
    ema_decay: float = 0.999
    validation_fraction: float = 0.15
    validation_every: int = 500
    validation_patches: int = 8
    validation_steps: int = 10
    checkpoint_every: int = 500
    seed: int = 0
    schedule: str | None = None          # override the preset: learned, linear, cosine
    mean_network: bool | None = None     # override the preset's ZMD mean network
    grad_clip: float = 1.0
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.preset == "paper" else 2e-4


def _config(settings: TrainingSettings, scale: int) -> CVDMConfig:
    overrides = dict(settings.config_overrides)
    overrides["scale"] = scale
    if settings.schedule is not None:
        overrides["schedule"] = settings.schedule
    config = CVDMConfig.preset(settings.preset, **overrides)
    if settings.mean_network is True and config.mean_net is None:
        config = dataclasses.replace(config, mean_net=dataclasses.replace(
            config.denoiser, attention_at_lowest=False))
    elif settings.mean_network is False:
        config = dataclasses.replace(config, mean_net=None)
    return config


def _validation_set(val_pairs, scale: int, patch: int, count: int, seed: int):
    usable = [p for p in val_pairs if min(p.hq.shape) >= patch]
    if not usable:
        patch = min(min(p.hq.shape) for p in val_pairs) // 8 * 8
        usable = val_pairs
    sampler = PatchSampler(usable, scale, patch, torch.Generator().manual_seed(seed + 1), augment=False)
    return sampler.batch(count)


def evaluate(model: CVDM, x: torch.Tensor, y: torch.Tensor, steps: int = 10,
             seed: int = 0) -> dict[str, float]:
    """PSNR/SSIM of one deterministic CVDM sample (and of the bicubic input) per patch."""
    model.eval()
    with torch.inference_mode():
        noise = torch.randn((1,) + tuple(x.shape), generator=torch.Generator().manual_seed(seed))
        out = sample(model, x, noise.to(x.device), steps=steps, eta=0.0)[0]
        prep = model.prepare(x)
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "bicubic_psnr": [], "bicubic_ssim": []}
    if "mu" in prep:
        scores.update(mean_psnr=[], mean_ssim=[])
    for i in range(x.shape[0]):
        target = y[i, 0].cpu().numpy()
        scores["psnr"].append(psnr(out[i, 0].cpu().numpy(), target))
        scores["ssim"].append(ssim(out[i, 0].cpu().numpy(), target))
        scores["bicubic_psnr"].append(psnr(x[i, 0].cpu().numpy(), target))
        scores["bicubic_ssim"].append(ssim(x[i, 0].cpu().numpy(), target))
        if "mu" in prep:
            scores["mean_psnr"].append(psnr(prep["mu"][i, 0].cpu().numpy(), target))
            scores["mean_ssim"].append(ssim(prep["mu"][i, 0].cpu().numpy(), target))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def state_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".safetensors") + STATE_SUFFIX
                            if output.name.endswith(".safetensors") else output.name + STATE_SUFFIX)


def _save_checkpoint(output: Path, ema: CVDM, model: CVDM, optimizer, step: int,
                     metadata: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    ema.metadata = copy.deepcopy(metadata)
    ema.metadata["training"]["step"] = step
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    param_names = [n for n, _ in model.named_parameters()]
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param_names[idx]}.{key}"] = value.detach().cpu().contiguous()
    header = {"step": step, "param_names": param_names}
    # The state file first, then the model: a crash between the two leaves a model file
    # one checkpoint behind its state, and resume trusts only the state's step.
    with atomic_write(state_path(output)) as tmp:
        save_file(tensors, str(tmp), metadata={"napari_cvdm_state": json.dumps(header)})
    save_model(ema, output)


def _load_state(output: Path, model: CVDM, optimizer) -> int:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = state_path(output)
    if not path.is_file():
        raise ValueError(f"cannot resume: the training state {path} is missing")
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["napari_cvdm_state"])
    tensors = load_file(str(path))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    param_names = header["param_names"]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for idx, name in enumerate(param_names):
        entry = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            value = tensors.get(f"optim.{name}.{key}")
            if value is not None:
                entry[key] = value
        if entry:
            state[idx] = entry
    opt_state = optimizer.state_dict()
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    return int(header["step"])


def train(*, output: str | os.PathLike, pairs: tuple[str, str] | None = None,
          hq: str | os.PathLike | None = None, settings: TrainingSettings | None = None,
          degradation: Degradation | None = None, resume: bool = False, device: str = "auto",
          progress: Callable[[int, int, dict[str, float]], Any] | None = None,
          log: Callable[[str], Any] | None = None, cancel=None) -> CVDM:
    """Train a CVDM and write it (EMA weights) to ``output``; see ``cvdm train --help``."""
    settings = settings or TrainingSettings()
    if (pairs is None) == (hq is None):
        raise ValueError("give either pairs=(LQ_DIR, HQ_DIR) or hq=HQ_DIR")
    for name in ("steps", "batch_size", "patch_size", "validation_every", "checkpoint_every",
                 "validation_patches", "validation_steps"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1, not {getattr(settings, name)}")
    output = Path(output)
    say = log or (lambda message: None)
    dev = resolve_device(device)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)

    if pairs is not None:
        all_pairs, scale = load_pairs(*pairs)
        data_info: dict[str, Any] = {"mode": "pairs", "lq": str(pairs[0]), "hq": str(pairs[1]),
                                     "images": len(all_pairs)}
        hq_images = None
    else:
        degradation = degradation or Degradation()
        scale = degradation.scale
        hq_images = load_hq(hq)
        all_pairs = simulate_pairs(hq_images, degradation, generator)
        data_info = {"mode": "simulated", "hq": str(hq), "images": len(all_pairs),
                     "degradation": degradation.to_dict()}
    train_pairs, val_pairs = split_validation(all_pairs, settings.validation_fraction,
                                              settings.patch_size)
    sampler = PatchSampler(train_pairs, scale, settings.patch_size, generator)
    val_x, val_y = _validation_set(val_pairs, scale, settings.patch_size,
                                   settings.validation_patches, settings.seed)
    val_x, val_y = val_x.to(dev), val_y.to(dev)

    config = _config(settings, scale)
    model = CVDM(config).to(dev)
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr())
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)

    metadata: dict[str, Any] = {
        "normalization": {"percentiles": list(DEFAULT_PERCENTILES), "range": [-1, 1]},
        "training": {"preset": settings.preset, "steps_planned": settings.steps,
                     "settings": dataclasses.asdict(settings), "data": data_info,
                     "validation_images": sorted({p.name for p in val_pairs}),
                     "training_images": len(train_pairs), "device": str(dev),
                     "history": []},
    }
    start = 0
    if resume:
        start = _load_state(output, model, optimizer)
        if output.is_file():
            previous = load_model(output)
            if previous.config.to_dict() != config.to_dict():
                raise ValueError(f"cannot resume {output}: it was trained with a different "
                                 "configuration")
            ema.load_state_dict(previous.state_dict())
            metadata["training"]["history"] = (previous.metadata.get("training", {})
                                               .get("history", []))
        else:
            # Interrupted between the state file and the first model file: the averaged
            # weights restart from the trained weights.
            ema.load_state_dict(model.state_dict())
        # Advance the data stream so a resumed run does not repeat the first batches.
        generator.manual_seed(settings.seed + start)
        say(f"resumed from step {start}")
    autocast = dev.type == "cuda"
    started, last_loss = time.perf_counter(), {}
    step = start
    for step in range(start + 1, settings.steps + 1):
        if _cancel_requested(cancel):
            raise Cancelled(f"training cancelled at step {step - 1}; the last checkpoint is kept")
        if hq_images is not None and step % SIMULATION_REFRESH == 0:
            # split_validation is deterministic: the same images (or strips) stay held out.
            fresh = simulate_pairs(hq_images, degradation, generator)
            sampler.pairs = split_validation(fresh, settings.validation_fraction,
                                             settings.patch_size)[0]
        model.train()
        x, y = sampler.batch(settings.batch_size)
        x, y = x.to(dev), y.to(dev)
        if dev.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        terms = model.loss(x, y, autocast=autocast)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
        last_loss = {k: float(v.detach()) for k, v in terms.items()}
        if not all(math.isfinite(v) for v in last_loss.values()):
            raise TrainingDiverged(f"training diverged at step {step} (loss {last_loss}); "
                                   "the last checkpoint is kept; lower the learning rate "
                                   "(--lr) and --resume")
        if progress is not None:
            progress(step, settings.steps, last_loss)
        if step % settings.validation_every == 0 or step == settings.steps:
            scores = evaluate(ema, val_x, val_y, settings.validation_steps, settings.seed)
            scores.update(step=step, loss=last_loss["total"],
                          gamma_start=last_loss["gamma_start"], gamma_end=last_loss["gamma_end"],
                          seconds=round(time.perf_counter() - started, 1))
            metadata["training"]["history"].append(scores)
            say("step {step}: loss {loss:.4f}  val PSNR {psnr:.2f} dB (bicubic "
                "{bicubic_psnr:.2f})  SSIM {ssim:.3f}  gamma(0)={gamma_start:.5f} "
                "gamma(1)={gamma_end:.2e}".format(**scores))
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _save_checkpoint(output, ema, model, optimizer, step, metadata)
    ema.metadata = copy.deepcopy(metadata)
    ema.metadata["training"]["step"] = step
    return ema
