"""Training checkpoints: the model file (EMA weights) plus a training-state file for resume.

Both are put in place together (``atomic.atomic_group``): all or none, also when the run is
interrupted between the two renames; only SIGKILL or a power loss in that instant can leave
a model file one checkpoint behind its state, and resume trusts only the state's step. The
state holds the raw weights and Adam's moments, never pickle.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_group
from .model_files import model_file_contents

STATE_SUFFIX = ".train-state.safetensors"
STATE_KEY = "napari_cvdm_state"


def state_path(output: Path) -> Path:
    output = Path(output)
    stem = output.name.removesuffix(".safetensors") if output.name.endswith(".safetensors") \
        else output.name
    return output.with_name(stem + STATE_SUFFIX)


def _header_entry(path: Path, key: str) -> Any:
    """The JSON entry ``key`` of a safetensors file's header (the header only, no tensors).

    KeyError where it has none; SafetensorError, OSError or ValueError where the file is
    missing, damaged or not safetensors.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return json.loads((fh.metadata() or {})[key])


def is_training_state(path: Path) -> bool:
    """Whether ``path`` is a napari-cvdm training state (its header says so)."""
    try:
        _header_entry(path, STATE_KEY)
        return True
    except Exception:  # not safetensors, damaged, unreadable, not a state
        return False


def save_checkpoint(output: Path, ema, model, optimizer, step: int,
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
    header = {"step": step, "param_names": param_names, "config": model.config.to_dict(),
              "run": run_record(metadata),
              # a fine-tuned model's configuration is its start's, not the settings'
              "init": (metadata.get("training") or {}).get("init")}
    model_tensors, model_header = model_file_contents(ema)
    # one unit: an interrupt between two separate writes left a new run's state beside an
    # earlier run's model, which a resume then took for this run's average
    with atomic_group([state_path(output), output]) as (state_tmp, model_tmp):
        save_file(tensors, str(state_tmp), metadata={STATE_KEY: json.dumps(header)})
        save_file(model_tensors, str(model_tmp), metadata=model_header)


def model_file_training(path: Path) -> dict[str, Any]:
    """The ``training`` record in a model file's header ({} where there is none or it cannot
    be read); the header only, no weights."""
    try:
        training = _header_entry(path, "napari_cvdm")["metadata"]["training"]
        return training if isinstance(training, dict) else {}
    except Exception:  # missing, damaged, not a model
        return {}


def state_scale(output: Path) -> int | None:
    """The scale of the model a training state holds (its header only), or None."""
    try:
        scale = _header_entry(state_path(output), STATE_KEY)["config"]["scale"]
        return scale if isinstance(scale, int) else None
    except Exception:  # missing or damaged: read_state says so, with its message
        return None


def recorded_optics(init=None, resumed: Path | None = None):
    """The simulated optics a run given none takes (a ``Degradation``): those the model
    ``init`` (a loaded model, a bundled name or a file) was trained with, or those of the
    run a training state beside ``resumed`` continues (its header's record; else its model
    file's). None where none is recorded (trained on pairs; an older or foreign file) or the
    file cannot be read: the run's own checks then say why, with their message."""
    from .degradation import trained_optics

    try:
        if init is not None and hasattr(init, "metadata"):
            metadata = init.metadata
        elif init is not None:
            from .model_files import header_of, model_path

            metadata = header_of(model_path(init)).get("metadata")  # a package's too
        elif resumed is not None:
            try:
                data = (_header_entry(state_path(resumed), STATE_KEY).get("run") or {})["data"]
            except Exception:  # no state, or one written before states kept the record
                data = model_file_training(Path(resumed)).get("data")
            metadata = {"training": {"data": data}}
        else:
            return None
    except Exception:  # noqa: BLE001 - not found, damaged: the run's checks say so
        return None
    return trained_optics(metadata) if isinstance(metadata, dict) else None


def is_fine_tune(header: dict, output: Path) -> bool:
    """Whether the run a state continues started from a model (``init``): the state says
    so; a state written before it did is asked of its model file (the same run's record)."""
    if "init" in header:
        return bool(header["init"])
    return bool(model_file_training(output).get("init"))


def read_state(output: Path, config) -> tuple[dict, dict[str, torch.Tensor]]:
    """The state file's header and tensors, checked against ``config`` before any use.

    ValueError for a missing, truncated or foreign file, or one of another configuration.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = state_path(output)
    if not path.is_file():
        raise ValueError(f"cannot resume: the training state {path} is missing")
    try:
        header = _header_entry(path, STATE_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, KeyError, OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot resume: the training state {path} is damaged or not a "
                         f"napari-cvdm training state ({type(exc).__name__})") from None
    if not isinstance(header, dict) or not isinstance(header.get("step"), int) \
            or not isinstance(header.get("param_names"), list) or header["step"] < 0:
        raise ValueError(f"cannot resume: the training state {path} has a damaged header")
    saved = header.get("config")
    header["fine_tune"] = is_fine_tune(header, output)  # asked once (it may read the model)
    try:
        if saved is not None and header["fine_tune"]:  # the start's configuration
            type(config).from_dict(saved)  # (the settings are compared by the run record)
            same = True
        else:
            same = saved is None or type(config).from_dict(saved) == config
    except (TypeError, ValueError):
        same = False
    if not same:
        preset = ((header.get("run") or {}).get("settings") or {}).get("preset") \
            if isinstance(header.get("run"), dict) else None
        hint = f"the run used the preset {preset!r}: give it again (--preset {preset}); " \
            if isinstance(preset, str) else ""
        raise ValueError(f"cannot resume: {path} was trained with another model configuration "
                         f"({_differences(saved, config)}); {hint}train to a new file or use "
                         "the same settings")
    damaged = [name for name, value in tensors.items()
               if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if damaged:  # resuming would only "diverge" at once, and the advice to resume would loop
        raise ValueError(f"cannot resume: the training state {path} is damaged ({len(damaged)} "
                         f"tensors hold NaN or infinite values, e.g. {damaged[0]}); train to a "
                         "new file, or start from its model with init (--init)")
    return header, tensors


# What may change when a run is resumed: how long it runs, how often it looks at itself,
# and what it started from (init: the weights already hold it). The recovery settings may
# change too (a lower learning rate after a divergence, a smaller batch after running out
# of memory), and the model's record lists them. Anything else (data, optics, seed, the
# rate's decay) would make one model of two different runs, recorded as one.
RESUMABLE_CHANGES = frozenset({"steps", "validation_every", "checkpoint_every",
                               "first_checkpoint", "validation_steps", "precision", "init"})
RECOVERY_CHANGES = frozenset({"learning_rate", "batch_size", "grad_clip"})
FOLDER_NAMES = frozenset({"hq", "lq"})  # the training folders' names, in the data record


def run_record(metadata: dict[str, Any]) -> dict[str, Any]:
    """The data and settings a resumed run must share with the run it continues (JSON)."""
    training = metadata.get("training") or {}
    settings = {k: v for k, v in (training.get("settings") or {}).items()
                if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps({"data": training.get("data"), "settings": settings},
                                 default=str))


def check_same_run(header: dict, metadata: dict[str, Any], output: Path) -> list[str]:
    """The recovery settings this resume changes ("name: there -> here"); ValueError where
    its data or other settings differ from those of the run that wrote the state (states
    written before the record existed are not checked)."""
    saved, here = header.get("run"), run_record(metadata)
    if not isinstance(saved, dict) or saved == here:
        return []
    changed, recovery = [], []
    # the images' digest on both sides and equal: the same images, in whatever folder now
    digests = [d.get("fingerprint") if isinstance(d, dict) else None
               for d in (saved.get("data"), here.get("data"))]
    same_images = digests[0] is not None and digests[0] == digests[1]
    for part in ("settings", "data"):
        there, now = saved.get(part) or {}, here.get(part) or {}
        if not isinstance(there, dict):
            there = {}
        for key in sorted(set(there) | set(now)):
            if there.get(key) == now.get(key):
                continue
            if part == "data" and key in FOLDER_NAMES and same_images:
                continue  # the same images moved or copied to a folder of another name
            if part == "data" and key == "fingerprint" and key not in there:
                continue  # a state written before the images' digest was recorded
            if part == "data" and key == "fingerprint":
                changed.append("the training images differ from those of the run it "
                               "continues (other pixels or names, or read differently by "
                               "another napari-cvdm version)")
                continue
            if part == "settings" and key in RECOVERY_CHANGES:
                recovery.append(f"{key}: {_shown(there.get(key))} -> {_shown(now.get(key))}")
            else:
                changed.append(f"{key}: {there.get(key)!r} there, {now.get(key)!r} in this run")
    if changed:
        raise ValueError(f"cannot resume {output}: it was trained with other data or settings "
                         f"({'; '.join(changed[:4])}); resume with the same data and settings "
                         "(only the steps, how often to validate or checkpoint, the "
                         "precision, the learning rate, batch size and gradient clip may "
                         "change), or train to a new file")
    return recovery


def _shown(value: Any) -> str:
    return "the default" if value is None else repr(value)


def resumed_changes(before: dict[str, Any], settings) -> list[str]:
    """What a resume changes of the settings it may change freely and the record keeps
    (the total steps, the precision: "name: there -> here"), from the record of the model it
    continues (``before``: its ``training`` metadata)."""
    saved = before.get("settings") or {}
    out = []
    for key in ("steps", "precision"):
        if key in saved and saved[key] != getattr(settings, key):
            out.append(f"{key}: {_shown(saved[key])} -> {_shown(getattr(settings, key))}")
    return out


def _differences(saved, config) -> str:
    """The settings that differ, "name: saved there, this run here" (at most four)."""
    if not isinstance(saved, dict):
        return "the saved configuration is damaged"
    here = json.loads(json.dumps(config.to_dict()))
    changed = [f"{key}: {saved.get(key)!r} there, {value!r} in this run"
               for key, value in here.items() if saved.get(key) != value]
    return "; ".join(changed[:4]) or "the saved configuration is damaged"


def load_state(state: tuple[dict, dict[str, torch.Tensor]], model, optimizer,
               output: Path) -> int:
    """Restore the raw weights and Adam's moments from ``read_state``'s result; returns the
    step to continue after."""
    header, tensors = state
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    bad = [k for k in expected if k not in weights or weights[k].shape != expected[k].shape]
    if bad or set(weights) - set(expected):
        raise ValueError(f"cannot resume: the training state {state_path(output)} does not "
                         f"match this model ({len(bad)} missing or mis-shaped tensors)")
    model.load_state_dict(weights)
    state: dict[int, dict[str, torch.Tensor]] = {}
    shapes = dict(model.named_parameters())
    for idx, name in enumerate(header["param_names"]):
        entry = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            value = tensors.get(f"optim.{name}.{key}")
            if value is not None:
                if key != "step" and (name not in shapes or value.shape != shapes[name].shape):
                    raise ValueError(f"cannot resume: optimizer state of {name} is damaged")
                entry[key] = value
        if entry:
            state[idx] = entry
    opt_state = optimizer.state_dict()
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    return int(header["step"])
