"""train(): fit a CVDM on image pairs, high-quality images or generated structures.

Adam on the total loss of SPEC section 1, an exponential moving average of the weights
(the model that is saved), a held-out validation set scored by PSNR and SSIM at intervals,
atomic checkpoints (the first one early) plus a training-state file for ``resume``, and
``init`` to fine-tune a model's weights with a fresh optimizer. The networks run at the
chosen precision (bfloat16 on CPUs that have it); the schedule and the loss stay float32.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import (check_same_run, load_state, read_state,  # noqa: F401
                          recorded_optics, resumed_changes, run_record, save_checkpoint,
                          state_path)
from .degradation import Degradation, run_optics, told_widths
from .devices import resolve_device
from .errors import Cancelled, TrainingDiverged
from .errors import cancel_requested as _cancel_requested
from .io import load_model
from .model_files import training_output_problem
from .metrics import has_range, psnr, ssim
from .model.config import CVDMConfig
from .model.cvdm import CVDM, conditioned_on_psf
from .normalization import DEFAULT_PERCENTILES
from .output_lock import output_lock
from .precision import grad_scaler, resolve_precision
from .psf_width import psf_sigma_for
from .sampling import sample
from .settings import TrainSettings
from .training_data import prepare_data

SIMULATION_REFRESH = 100  # steps between fresh simulated optics of the training set
FIRST_CHECKPOINT_SECONDS = 300  # the first checkpoint comes after this long at the latest
MAX_SKIPPED_UPDATES = 5  # non-finite gradients in a row (finite loss) before giving up


TrainingSettings = TrainSettings  # the old name; the class lives in settings.py


def _config(settings: TrainingSettings, scale: int) -> CVDMConfig:
    overrides = dict(settings.config_overrides)
    overrides["scale"] = scale
    if settings.schedule is not None:
        overrides["schedule"] = settings.schedule
    if settings.psf_conditioned:
        overrides["psf_conditioned"] = True
    config = CVDMConfig.preset(settings.preset, **overrides)
    if settings.mean_network is True and config.mean_net is None:
        config = dataclasses.replace(config, mean_net=dataclasses.replace(
            config.denoiser, attention_at_lowest=False))
    elif settings.mean_network is False:
        config = dataclasses.replace(config, mean_net=None)
    return config


def evaluate(model: CVDM, x: torch.Tensor, y: torch.Tensor, steps: int = 10,
             seed: int = 0, psf_sigma=None) -> dict[str, float]:
    """PSNR/SSIM of one deterministic CVDM sample (and of the bicubic input), averaged
    over the patches whose target is not blank (``metrics.has_range``); empty when all are.

    ``psf_sigma`` (B,): the patches' PSF widths, told to a PSF-conditioned model."""
    model.eval()
    if not model.config.psf_conditioned:
        psf_sigma = None
    with torch.inference_mode():
        noise = torch.randn((1,) + tuple(x.shape), generator=torch.Generator().manual_seed(seed))
        prep = model.prepare(x, psf_sigma=psf_sigma)
        out = sample(model, x, noise.to(x.device), steps=steps, eta=0.0, prepared=prep)[0]
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "bicubic_psnr": [], "bicubic_ssim": []}
    if "mu" in prep:
        scores.update(mean_psnr=[], mean_ssim=[])
    for i in range(x.shape[0]):
        target = y[i, 0].cpu().numpy()
        if not has_range(target):
            continue
        scores["psnr"].append(psnr(out[i, 0].cpu().numpy(), target))
        scores["ssim"].append(ssim(out[i, 0].cpu().numpy(), target))
        scores["bicubic_psnr"].append(psnr(x[i, 0].cpu().numpy(), target))
        scores["bicubic_ssim"].append(ssim(x[i, 0].cpu().numpy(), target))
        if "mu" in prep:
            scores["mean_psnr"].append(psnr(prep["mu"][i, 0].cpu().numpy(), target))
            scores["mean_ssim"].append(ssim(prep["mu"][i, 0].cpu().numpy(), target))
    if not scores["psnr"]:
        return {}
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _widths(sigmas: torch.Tensor, pair_sigma: float | None) -> torch.Tensor:
    """Each patch's PSF width; measured pairs (NaN: not known) get ``pair_sigma``."""
    return sigmas if pair_sigma is None else torch.nan_to_num(sigmas, nan=pair_sigma)


def _check_settings(settings: TrainingSettings) -> None:
    for name in ("steps", "batch_size", "patch_size", "validation_every", "checkpoint_every",
                 "validation_patches", "validation_steps", "first_checkpoint"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1, not {getattr(settings, name)}")


def _initial_model(settings: TrainingSettings):
    """(model, provenance) from ``settings.init`` (its weights, config and scale), or None."""
    if settings.init is None:
        return None, None
    ignored = [name for name, value in
               (("schedule (--schedule)", settings.schedule),
                ("mean_network (--mean-network)", settings.mean_network),
                ("config_overrides", settings.config_overrides or None)) if value is not None]
    if ignored:  # they would be ignored, and the model card would record them
        raise ValueError(f"{', '.join(ignored)}: a fine-tuned model keeps the architecture and "
                         "schedule of the model it starts from (init); leave them out")
    base = load_model(settings.init)
    name = os.path.basename(os.fspath(settings.init))
    return base, {"init": name, "init_step": base.metadata.get("training", {}).get("step")}


def _same_run_model(previous: CVDM, config, header: dict) -> bool:
    """Whether a model file holds this state's run: its configuration, its run record (where
    both have one) and a step not past the state's (one checkpoint behind is the same run:
    a kill between the two renames, a restored backup)."""
    training = previous.metadata.get("training", {}) or {}
    step = training.get("step")
    if previous.config != config or not isinstance(step, int) or step > header["step"]:
        return False
    saved = header.get("run")
    return not isinstance(saved, dict) or run_record(previous.metadata) == saved


def _prepare_model(model: CVDM, dev: torch.device, low_precision: bool) -> CVDM:
    model = model.to(dev)
    if dev.type == "cpu" and not low_precision:
        # float32 oneDNN convolutions are fastest NHWC; bfloat16 ones are fastest NCHW (the
        # NHWC GroupNorm backward is 3x slower under autocast; docs/performance.md).
        model = model.to(memory_format=torch.channels_last)
    return model


def _finite(model) -> bool:
    """Whether every weight and buffer of ``model`` is finite (checked before a checkpoint
    replaces the last one)."""
    return all(bool(torch.isfinite(t).all()) for t in (*model.parameters(), *model.buffers())
               if t.is_floating_point())


def _kept(output: Path, saved_step: int | None, since: float | None = None) -> str:
    """What a stopped run keeps: ``saved_step``; or, where its checkpoint on disk was
    written after ``since`` (the run's start, ``time.time()``), the step that checkpoint
    records (an interrupt just after a checkpoint was put in place, before the run noted
    it, kept a later one than the run knew of)."""
    from .checkpoints import STATE_KEY, _header_entry

    try:
        state = state_path(output)
        if since is not None and state.stat().st_mtime >= since:
            saved_step = int(_header_entry(state, STATE_KEY)["step"])
    except Exception:  # noqa: BLE001 - none yet, or unreadable: what the run noted
        pass
    return (f"the last checkpoint is kept: {output} (step {saved_step})"
            if saved_step is not None else "no checkpoint was written yet")


# An interval's mean loss this many times the lowest so far: a run blowing up with finite
# weights (a review: lr 1.0 took the loss from 1.2-1.6 to 16-39 and wrote the model as done)
LOSS_BLOW_UP = 5.0


def _say_loss_blow_up(losses: list[float], lowest: float | None, step: int, say) -> float | None:
    """Say where the mean loss since the last validation is :data:`LOSS_BLOW_UP` times the
    lowest such mean of the run (its next checkpoint replaces the last); the new lowest."""
    if not losses:
        return lowest
    mean = sum(losses) / len(losses)
    if lowest is not None and mean > LOSS_BLOW_UP * lowest > 0:
        say(f"warning: step {step}: the loss ({mean:.3g} on average since the last "
            f"validation) is {mean / lowest:.0f} times its lowest ({lowest:.3g}): the run may "
            "be diverging, and its checkpoints from here on hold its weights as they are now; "
            "lower the learning rate (--lr) and train from a good model (--init)")
    return mean if lowest is None else min(lowest, mean)


def _say_decay_restart(before: dict[str, Any], settings: TrainSettings, step: int,
                       say) -> None:
    """Where a resume changes the total steps of a cosine decay, which follows the total:
    the learning rate jumps (back up, for more steps) at the step the run resumes from."""
    saved = (before.get("settings") or {}).get("steps")
    if settings.lr_decay != "cosine" or not isinstance(saved, int) or saved == settings.steps:
        return
    was = dataclasses.replace(settings, steps=saved).lr(min(step + 1, saved))
    now = settings.lr(step + 1)
    say(f"note: the cosine decay follows the total steps, {saved:,} before and {settings.steps:,} "
        f"now: the learning rate goes from {was:.3g} to {now:.3g} at step {step + 1:,}")


def train(*, output: str | os.PathLike, pairs=None, hq=None, synthetic=(),
          settings: TrainingSettings | None = None, degradation: Degradation | None = None,
          resume: bool = False, overwrite: bool = False, device: str = "auto",
          progress: Callable[[int, int, dict[str, float]], Any] | None = None,
          log: Callable[[str], Any] | None = None, cancel=None,
          on_validation: Callable[[int, dict[str, float], CVDM], Any] | None = None) -> CVDM:
    """Train a CVDM and write it (EMA weights) to ``output``; see ``cvdm train --help``.

    Data: ``pairs`` = (LQ_DIR, HQ_DIR) or a list of (low, high) arrays; or ``hq`` = a folder
    or a list of arrays, and/or ``synthetic`` = structure kinds (``structures.STRUCTURES``),
    with simulated optics ``degradation`` (None: those the ``init`` model, or on ``resume``
    the run itself, was trained with where recorded, else the defaults of
    ``napari_cvdm.simulation_defaults``). An existing file at ``output`` is replaced only
    when it is a napari-cvdm model and ``overwrite`` (or ``resume``) says so, never the
    ``init`` model (``model_files.training_output_problem``). ``progress(step, total,
    terms)`` after every step,
    ``on_validation(step, scores, ema_model)`` at every validation, ``cancel`` an Event or a
    callable (raises ``Cancelled``; the last checkpoint is kept).
    """
    settings = TrainingSettings() if settings is None else settings
    if not isinstance(settings, TrainingSettings):
        raise TypeError(f"settings must be a TrainingSettings, not {type(settings).__name__} "
                        "(TrainingSettings(**values) makes one)")
    _check_settings(settings)
    if resume and settings.init is not None:
        raise ValueError("resume continues a run; init starts a new one from a model's weights: "
                         "give one of them")
    problem = training_output_problem(output, overwrite, settings.init, resume)
    if problem:
        raise ValueError(problem)
    output = Path(output).expanduser()
    with output_lock(output):  # one run per model file (output_lock.py)
        return _train(output, pairs, hq, synthetic, settings, degradation, resume, device,
                      progress, log, cancel, on_validation)


def _train(output: Path, pairs, hq, synthetic, settings: TrainingSettings,
           degradation: Degradation | None, resume: bool, device: str, progress, log, cancel,
           on_validation) -> CVDM:
    """:func:`train` once its settings and output are checked and its output is locked."""
    say = log or (lambda message: None)
    dev = resolve_device(device)
    precision = resolve_precision(settings.precision, dev, training=True)
    base, init_info = _initial_model(settings)
    if pairs is None and degradation is None:
        # a fine-tune, or a resumed run, simulates what its model was trained with, where the
        # file says it; else the defaults
        degradation = run_optics(recorded_optics(base, output if resume else None),
                                 base.config.scale if base is not None else None)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    data = prepare_data(pairs=pairs, hq=hq, synthetic=synthetic, degradation=degradation,
                        patch_size=settings.patch_size,
                        validation_fraction=settings.validation_fraction,
                        validation_patches=settings.validation_patches, seed=settings.seed,
                        generator=generator)
    if base is not None:
        if base.config.scale != data.scale:
            raise ValueError(f"the model to fine-tune ({settings.init}) has scale "
                             f"x{base.config.scale} but the training data are x{data.scale}")
        if settings.psf_conditioned and not base.config.psf_conditioned:
            base = conditioned_on_psf(base)  # starts as exactly the blind model
        config = base.config
    else:
        config = _config(settings, data.scale)
    state = read_state(output, config) if resume else None  # every check before any work
    if state is not None and state[0].get("config") and state[0]["fine_tune"]:
        # a fine-tuned run continues with the configuration of the model it started from
        # (its preset and conditioning are not the settings'; --resume takes no --init)
        config = type(config).from_dict(state[0]["config"])
        if config.scale != data.scale:
            raise ValueError(f"cannot resume {output}: it is a x{config.scale} model and the "
                             f"training data are x{data.scale}")
    conditioned = config.psf_conditioned
    if degradation is not None and degradation.told_error > 0 and not conditioned:
        raise ValueError("told_error (--told-error) applies to a model told the PSF width; "
                         "add psf_conditioned (--psf-conditioned) or leave it at 0")
    val_x, val_y = data.val_x.to(dev), data.val_y.to(dev)

    model = CVDM(config, metadata=base.metadata if base is not None else None)
    if base is not None:
        model.load_state_dict(base.state_dict())
    # Measured pairs do not say their PSF width: a conditioned model learns them as the
    # width it is told by default, which predict() then uses for such images.
    pair_sigma = psf_sigma_for(model, None) if conditioned and not data.simulated else None
    val_sigma = _widths(data.val_sigma, pair_sigma).to(dev) if conditioned else None
    model = _prepare_model(model, dev, precision.low)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr())
    scaler = grad_scaler(dev, enabled=precision.name == "fp16")
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)

    normalization = (base.metadata.get("normalization") if base is not None else None) or \
        {"percentiles": list(DEFAULT_PERCENTILES), "range": [-1, 1]}
    metadata: dict[str, Any] = {
        "normalization": normalization,
        "training": {"preset": config.preset, "steps_planned": settings.steps,
                     "settings": dataclasses.asdict(settings), "data": data.info,
                     "validation_images": data.validation_names,
                     "training_images": data.training_images, "device": str(dev),
                     "precision": precision.name, "history": []},
    }
    if conditioned and (pair_sigma is not None or base is not None):
        metadata["psf_sigma_default"] = psf_sigma_for(model, None)
    if init_info is not None:
        metadata["training"].update(init_info)
        metadata["training"]["history"] = list(base.metadata.get("training", {}).get("history", []))
    start = 0
    if resume:
        changes = check_same_run(state[0], metadata, output)
        if state[0]["step"] >= settings.steps:
            raise ValueError(f"cannot resume {output}: the run is already at step "
                             f"{state[0]['step']}; give more steps than that to train further")
        start = load_state(state, model, optimizer, output)
        previous = load_model(output) if output.is_file() else None
        if previous is not None and not _same_run_model(previous, config, state[0]):
            say(f"{output} is not this run's model (another run, or past this state's step): "
                "the running average starts again from the state's weights")
            previous = None
        if previous is not None:
            for key in ("normalization", "psf_sigma_default"):  # what the start brought
                if key in previous.metadata:
                    metadata[key] = previous.metadata[key]
            ema.load_state_dict(previous.state_dict())
            metadata["training"]["history"] = (previous.metadata.get("training", {})
                                               .get("history", []))
            before = previous.metadata.get("training", {})
            metadata["training"]["resumed_with"] = list(before.get("resumed_with", []))
            changes += resumed_changes(before, settings)
            _say_decay_restart(before, settings, state[0]["step"], say)
            for key in ("init", "init_step", "averaged_with"):  # where the run started
                if key in before:
                    metadata["training"][key] = before[key]
        else:
            if previous is None and not output.is_file():
                say(f"{output} is missing: the running average starts again from the "
                    "state's weights, and the earlier validations are not in the new model")
            ema.load_state_dict(model.state_dict())
            if state[0]["fine_tune"] and state[0].get("init"):  # for the next resume
                metadata["training"]["init"] = state[0]["init"]
        generator.manual_seed(settings.seed + start)
        # the timesteps and noise of the loss too: reseeded as at the start, every resumed
        # part of a run drew the first part's sequence again
        torch.manual_seed(settings.seed + start)
        if changes:  # recorded: the model card describes both parts of the run
            metadata["training"].setdefault("resumed_with", []).append(
                {"step": start, "changes": changes})
        say(f"resumed from step {start}" + (f" with {'; '.join(changes)}" if changes else ""))

    started = time.perf_counter()
    began = time.time()  # the checkpoints of this run are newer (_kept)
    saved_step = start if resume else None
    skipped = 0  # updates left out in a row for a non-finite gradient
    interval: list[float] = []  # the losses since the last validation
    lowest: float | None = None  # the lowest mean loss of an interval so far
    step = start
    try:
        for step in range(start + 1, settings.steps + 1):
            if _cancel_requested(cancel):
                raise Cancelled(f"training cancelled at step {step - 1}; "
                                f"{_kept(output, saved_step, began)}")
            if data.simulated and step % SIMULATION_REFRESH == 0:
                data.refresh()
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = settings.lr(step)
            if conditioned:
                x, y, psf_sigma = data.sampler.batch(settings.batch_size, with_psf=True)
                psf_sigma = _widths(psf_sigma, pair_sigma)
                if degradation is not None and pair_sigma is None:
                    psf_sigma = told_widths(psf_sigma, degradation.told_error, generator)
                psf_sigma = psf_sigma.to(dev)
            else:
                (x, y), psf_sigma = data.sampler.batch(settings.batch_size), None
            x, y = x.to(dev), y.to(dev)
            if dev.type == "cpu" and not precision.low:
                x = x.contiguous(memory_format=torch.channels_last)
            terms = model.loss(x, y, precision=precision, psf_sigma=psf_sigma)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            scaler.unscale_(optimizer)
            # 0 turns clipping off (a norm of 0 would zero every step); the norm is taken
            # either way, to see a non-finite gradient
            norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), settings.grad_clip if settings.grad_clip > 0 else math.inf)
            if scaler.is_enabled() or bool(torch.isfinite(norm)):
                scaler.step(optimizer)  # fp16's scaler skips non-finite steps by itself
                skipped = 0
            else:  # a gradient overflowed with a finite loss: this update is left out
                skipped += 1
                say(f"step {step}: a non-finite gradient; the update is skipped")
                if skipped >= MAX_SKIPPED_UPDATES:
                    raise TrainingDiverged(
                        f"training diverged at step {step} ({skipped} non-finite gradients "
                        f"in a row); {_kept(output, saved_step, began)}; lower the learning "
                        "rate and resume")
            scaler.update()
            decay = min(settings.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
            last_loss = {k: float(v.detach()) for k, v in terms.items()}
            if not all(math.isfinite(v) for v in last_loss.values()):
                raise TrainingDiverged(f"training diverged at step {step} (loss "
                                       f"{last_loss['total']}); "
                                       f"{_kept(output, saved_step, began)}; lower the "
                                       "learning rate and resume")
            if progress is not None:
                progress(step, settings.steps, last_loss)
            interval.append(last_loss["total"])
            if step % settings.validation_every == 0 or step == settings.steps:
                lowest = _say_loss_blow_up(interval, lowest, step, say)
                interval = []
                scores = evaluate(ema, val_x, val_y, settings.validation_steps, settings.seed,
                                  psf_sigma=val_sigma)
                if not scores:
                    say(f"step {step}: loss {last_loss['total']:.4f}  no validation score "
                        "(the validation patches are blank)")
                    if on_validation is not None:  # the preview still follows the model
                        on_validation(step, {}, ema)
                else:
                    scores.update(step=step, loss=last_loss["total"],
                                  gamma_start=last_loss["gamma_start"],
                                  gamma_end=last_loss["gamma_end"],
                                  seconds=round(time.perf_counter() - started, 1))
                    metadata["training"]["history"].append(scores)
                    say("step {step}: loss {loss:.4f}  val PSNR {psnr:.2f} dB (bicubic "
                        "{bicubic_psnr:.2f})  SSIM {ssim:.3f}  gamma(0)={gamma_start:.5f} "
                        "gamma(1)={gamma_end:.2e}".format(**scores))
                    if on_validation is not None:
                        on_validation(step, scores, ema)
            first_due = saved_step is None and (
                step >= settings.first_checkpoint
                or time.perf_counter() - started >= FIRST_CHECKPOINT_SECONDS)
            if first_due or step % settings.checkpoint_every == 0 or step == settings.steps:
                if not (_finite(ema) and _finite(model)):  # never over the last good one
                    raise TrainingDiverged(f"training diverged at step {step} (weights not "
                                           f"finite); {_kept(output, saved_step, began)}; "
                                           "lower the learning rate and resume")
                try:
                    save_checkpoint(output, ema, model, optimizer, step, metadata)
                except OSError as exc:  # a full disk: say what the run keeps
                    raise OSError(exc.errno, f"{exc.strerror or exc}; "
                                  f"{_kept(output, saved_step, began)}") from None
                saved_step = step
    except KeyboardInterrupt:  # Ctrl-C: say what is kept, like a cancel
        raise Cancelled(f"training cancelled at step {max(start, step - 1)}; "
                        f"{_kept(output, saved_step, began)}") from None
    ema.metadata = copy.deepcopy(metadata)
    ema.metadata["training"]["step"] = step
    return ema
