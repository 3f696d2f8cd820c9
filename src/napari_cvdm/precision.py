"""Arithmetic precision of the networks: "auto", "fp32", "bf16" or "fp16", resolved per device.

Only the networks run in low precision (under ``torch.autocast``); the schedule, the sampler
state, the loss terms that differentiate gamma and the statistics stay float32.

"auto" on a CPU is bfloat16 only where it measurably pays: where oneDNN supports bfloat16
at all, a short probe (a 3x3 64->64 convolution, float32 against bfloat16 in the memory
layouts the networks then really use, alternating, median; well under a second, once per
process and purpose) times both, and bfloat16 is chosen when it is at least
``BF16_MIN_SPEEDUP`` (1.2x) faster. The CPU's feature flags are not enough: on an Intel
Xeon with AVX512-BF16 but no AMX the bfloat16 convolutions ran at 160 GFLOP/s against 250
in float32, while AMD EPYC CPUs with the same flag run them about twice as fast.
``NAPARI_CVDM_CPU_BF16=1`` (or ``0``) forces the choice without probing;
:func:`cpu_bf16_choice` says what was chosen and why. A failed probe means float32.
"auto" on CUDA is bfloat16 autocast where the GPU computes it in hardware (compute
capability 8.0 or newer), else float16; float32 elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .devices import cuda_index

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: its name ("fp32", "bf16", "fp16") and the device type it runs on."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for float32."""
        return _DTYPES[self.name]

    @property
    def low(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        """A context that runs the networks inside it at this precision."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


FP32_CPU = Precision("fp32", "cpu")


@functools.cache
def cpu_bf16_supported() -> bool:
    """Whether oneDNN can run bfloat16 convolutions on this CPU (torch's own check)."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether the CPU reports bfloat16 instructions (AVX512-BF16 or AMX) to oneDNN's check.

    Informational only: "auto" does not trust it (an Intel Xeon with AVX512-BF16 and no AMX
    runs bfloat16 convolutions slower than float32); it measures (:func:`cpu_bf16_choice`).
    """
    if not cpu_bf16_supported():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    import platform

    return platform.machine().lower() in ("arm64", "aarch64")


# -- "auto" on a CPU: a measured choice -----------------------------------------------------
BF16_ENV = "NAPARI_CVDM_CPU_BF16"  # "1" forces bfloat16 for "auto" on a CPU, "0" float32
BF16_MIN_SPEEDUP = 1.2  # bfloat16 convolutions at least this much faster than float32
_PROBE_CHANNELS, _PROBE_SIZE = 64, 128  # a 3x3 conv of the networks' typical width, 128²
_PROBE_PAIRS, _PROBE_MIN_PAIRS, _PROBE_BUDGET_S = 5, 3, 0.3
_TRUE, _FALSE = ("1", "true", "yes", "on", "bf16"), ("0", "false", "no", "off", "fp32")


@dataclass(frozen=True)
class Bf16Choice:
    """What "auto" chose on this CPU and why.

    ``source``: "env" (``NAPARI_CVDM_CPU_BF16``), "measured" (the probe), "unsupported"
    (oneDNN has no bfloat16) or "failed" (the probe raised; float32). ``speedup``: float32
    time / bfloat16 time of the probe's convolution (None where nothing was measured);
    ``seconds``: what the probe cost.
    """

    bf16: bool
    source: str
    speedup: float | None = None
    seconds: float | None = None
    detail: str = ""

    def as_info(self) -> dict:
        """A small dict for a result's info or a log."""
        return {"cpu_bf16": self.bf16, "source": self.source,
                "speedup": None if self.speedup is None else round(self.speedup, 3),
                "threshold": BF16_MIN_SPEEDUP}


def _probe_speedup(training: bool) -> float:
    """float32 time / bfloat16 time of a 3x3 conv, in the layouts ``train``/``predict`` use.

    Prediction runs both precisions channels-last (the running model and the bfloat16 copy
    of the denoiser); training runs float32 channels-last and bfloat16 NCHW (training.py,
    ``_prepare_model``). Forward only, torch's own thread count, a warm-up call each, then up
    to ``_PROBE_PAIRS`` alternating pairs (fewer if the budget is spent); the median of the
    per-pair ratios, so that a load changing during the probe cancels out.
    """
    import statistics
    import time

    c, n = _PROBE_CHANNELS, _PROBE_SIZE
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(c, c, 3, 3, generator=gen) * (2.0 / (9 * c)) ** 0.5
    x = torch.randn(1, c, n, n, generator=gen)
    cl = torch.channels_last
    low_fmt = torch.contiguous_format if training else cl
    runs = [(weight.contiguous(memory_format=cl), x.contiguous(memory_format=cl)),
            (weight.to(torch.bfloat16).contiguous(memory_format=low_fmt),
             x.to(torch.bfloat16).contiguous(memory_format=low_fmt))]

    def timed(w, inp):
        t = time.perf_counter()
        torch.nn.functional.conv2d(inp, w, padding=1)
        return time.perf_counter() - t

    with torch.inference_mode():
        start = time.perf_counter()
        for w, inp in runs:  # warm-up: oneDNN builds its kernels on the first call
            timed(w, inp)
        ratios = []
        while len(ratios) < _PROBE_PAIRS:
            fp32, bf16 = (timed(w, inp) for w, inp in runs)
            ratios.append(fp32 / bf16)
            if len(ratios) >= _PROBE_MIN_PAIRS and time.perf_counter() - start > _PROBE_BUDGET_S:
                break
    return float(statistics.median(ratios))


_probe_lock = threading.Lock()
_probed: dict[bool, Bf16Choice] = {}  # per purpose (training or not), once per process


def _measured_choice(training: bool) -> Bf16Choice:
    with _probe_lock:
        choice = _probed.get(training)
        if choice is None:
            import time

            start = time.perf_counter()
            try:
                speedup = _probe_speedup(training)
                if not speedup > 0 or speedup == float("inf"):
                    raise ValueError(f"measured speed-up {speedup!r}")
            except Exception as exc:  # noqa: BLE001  (any failure means float32, silently)
                choice = Bf16Choice(False, "failed", None, time.perf_counter() - start,
                                    f"{type(exc).__name__}: {exc}")
            else:
                choice = Bf16Choice(speedup >= BF16_MIN_SPEEDUP, "measured", speedup,
                                    time.perf_counter() - start)
            _probed[training] = choice
        return choice


def cpu_bf16_choice(training: bool = False) -> Bf16Choice:
    """Whether "auto" runs bfloat16 on this CPU (for training or for prediction), and why.

    ``NAPARI_CVDM_CPU_BF16=1`` / ``0`` decides without probing (1 still gives float32 where
    oneDNN has no bfloat16). Otherwise the first call per purpose runs a short probe
    (:func:`_probe_speedup`, well under a second) and every later call returns its result.
    """
    if not cpu_bf16_supported():
        return Bf16Choice(False, "unsupported", detail="oneDNN reports no bfloat16")
    env = os.environ.get(BF16_ENV, "").strip().lower()
    if env in _TRUE:
        return Bf16Choice(True, "env", detail=f"{BF16_ENV}={env}")
    if env in _FALSE:
        return Bf16Choice(False, "env", detail=f"{BF16_ENV}={env}")
    if env and env != "auto":
        warnings.warn(f"{BF16_ENV}={env!r} is not 1, 0 or auto; measuring instead",
                      RuntimeWarning, stacklevel=2)
    return _measured_choice(training)


def cuda_bf16_native(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes in bfloat16 in hardware (compute capability 8.0,
    Ampere, or newer). torch's ``is_bf16_supported()`` also counts emulation, which older
    GPUs (T4, V100) run far slower than fp16; it also asks about the current GPU only."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(cuda_index(device))[0] >= 8


def cuda_bf16_supported(device: torch.device) -> bool:
    """Whether bf16 may be asked for on the GPU ``device``: in hardware, or emulated."""
    if not torch.cuda.is_available():
        return False
    if cuda_bf16_native(device):
        return True
    with torch.cuda.device(cuda_index(device)):  # is_bf16_supported() asks the current GPU
        return torch.cuda.is_bf16_supported()


def grad_scaler(device: torch.device, enabled: bool):
    """The loss scaler of fp16 training (``torch.amp.GradScaler`` is torch >= 2.3; before,
    only CUDA had one, and fp16 training is for CUDA)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled and device.type == "cuda")


def check_precision(name: str) -> str:
    """The name, normalised; ValueError naming the choices for anything else."""
    value = str(name).strip().lower() if name is not None else "auto"
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    value = aliases.get(value, value)
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    return value


def resolve_precision(name: str, device: torch.device, training: bool = False) -> Precision:
    """Turn a precision name into what runs on ``device``; ValueError where unsupported.

    "auto" on a CPU asks :func:`cpu_bf16_choice` (``training`` picks the layouts it measures);
    an explicit "bf16" never probes.
    """
    value = check_precision(name)
    kind = device.type
    if value == "auto":
        if kind == "cpu":
            value = "bf16" if cpu_bf16_choice(training).bf16 else "fp32"
        elif kind == "cuda":
            # bf16 where the GPU has it: on an H200, 512² -> 1024² at 8 x 4 took 1.23 s in
            # bf16 against 1.55 s in fp16 and 1.40 s in fp32 (benchmarks/gpu_chunk.py).
            value = "bf16" if cuda_bf16_native(device) else "fp16"
        else:
            value = "fp32"
        return Precision(value, kind)
    if value in ("bf16", "fp16") and kind == "mps":
        problem = mps_autocast_problem(value)
        if problem:
            raise ValueError(f"precision {value!r} does not run on MPS with this torch "
                             f"({problem}); use 'fp32' or 'auto'")
    if value == "fp16" and kind == "cpu":
        raise ValueError("precision 'fp16' is for GPUs; on a CPU use 'bf16' (where supported), "
                         "'fp32' or 'auto'")
    if value == "bf16":
        supported = {"cpu": cpu_bf16_supported,
                     "cuda": lambda: cuda_bf16_supported(device)}
        if kind in supported and not supported[kind]():
            where = "this CPU (oneDNN reports no bfloat16)" if kind == "cpu" else "this GPU"
            raise ValueError(f"precision 'bf16' is not supported on {where}; supported here: "
                             f"{', '.join(supported_precisions(device))}")
    return Precision(value, kind)


def mps_autocast_problem(value: str) -> str | None:
    """Why torch's autocast cannot run ``value`` ("bf16", "fp16") on MPS here, or None.
    Older torch has no autocast on MPS (it raises at the first network call), and some
    versions take one of the two types only: torch then warns and runs float32, while the
    result would say it ran in half precision."""
    dtype = torch.bfloat16 if value == "bf16" else torch.float16
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.autocast("mps", dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - an autocast device type this torch lacks
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return str(caught[0].message).splitlines()[0] if caught else None


def supported_precisions(device: torch.device) -> list[str]:
    """The precision names that ``resolve_precision`` accepts on ``device``."""
    out = ["auto", "fp32"]
    if device.type == "cpu":
        if cpu_bf16_supported():
            out.append("bf16")
    elif device.type == "cuda":
        if cuda_bf16_supported(device):
            out.append("bf16")
        out.append("fp16")
    else:
        out += [v for v in ("bf16", "fp16")
                if device.type != "mps" or mps_autocast_problem(v) is None]
    return out


def from_half_flag(half: bool | None, precision: str) -> str:
    """The precision for the deprecated ``half=`` argument (True: fp16, False: fp32)."""
    if half is None:
        return precision
    warnings.warn("half= is deprecated; use precision='fp16', 'bf16', 'fp32' or 'auto'",
                  DeprecationWarning, stacklevel=3)
    return "fp16" if half else "fp32"


# -- a low-precision copy of the denoiser for inference -------------------------------------
# Under autocast every call re-casts each convolution's float32 weights, while GroupNorm,
# swish, the residual additions and the concatenations run in float32 between casts of the
# activations: on a CPU the small presets spent as much time in these as the convolutions
# saved. A copy of the denoiser whose weights are stored in bfloat16 runs every layer on
# bfloat16 activations (GroupNorm still accumulates in float32) and casts nothing per call.
# The copy is cached per network and rebuilt when any weight changes (training, loading).
_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_copies_lock = threading.Lock()


class _LowPrecisionNet(nn.Module):
    """A copy of a network stored in ``dtype``: float32 in, float32 out."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net = net
        self.dtype = dtype

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        cond = None if cond is None else cond.to(self.dtype)
        return self.net(h.to(self.dtype), cond).float()


def _weights_key(net: nn.Module) -> tuple:
    """Changes whenever a weight is replaced or modified in place (optimizer steps)."""
    return (net.training,) + tuple((t.data_ptr(), t._version, t.dtype, str(t.device), t.shape)
                                   for t in (*net.parameters(), *net.buffers()))


def _low_copy(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``net`` with every floating-point tensor in ``dtype``; ``net`` untouched."""
    memo: dict[int, object] = {}
    with torch.inference_mode(False), torch.no_grad():
        for t in (*net.parameters(), *net.buffers()):
            if t.is_floating_point():
                fmt = torch.channels_last if t.dim() == 4 and t.device.type == "cpu" \
                    else torch.preserve_format
                low = t.detach().to(dtype, memory_format=fmt)
                memo[id(t)] = nn.Parameter(low, requires_grad=False) \
                    if isinstance(t, nn.Parameter) else low
        return copy.deepcopy(net, memo)


def low_precision_denoise(model: nn.Module, precision: Precision):
    """``model.denoise`` running a cached ``precision.dtype`` copy of the denoiser network.

    Everything outside the network (the gamma features, the v-to-eps conversion) stays float32
    and the result is float32. The model itself is never modified (safe across threads).
    """
    if precision.dtype is None:
        return model.denoise
    net = model.denoiser
    key = _weights_key(net)
    with _copies_lock:
        cached = _copies.get(net)
        if cached is None or cached[0] != key or cached[1].dtype != precision.dtype:
            cached = (key, _LowPrecisionNet(_low_copy(net, precision.dtype), precision.dtype))
            _copies[net] = cached
        low_net = cached[1]
    view = copy.copy(model)  # shares every module and tensor with the model ...
    object.__setattr__(view, "_modules", {**model._modules, "denoiser": low_net})  # ... but one
    return view.denoise
