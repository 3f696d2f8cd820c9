"""Arithmetic precision of the networks: "auto", "fp32", "bf16" or "fp16", resolved per device.

Only the networks run in low precision (under ``torch.autocast``); the schedule, the sampler
state, the loss terms that differentiate gamma and the statistics stay float32. "auto" is
bfloat16 on a CPU whose oneDNN has native bfloat16 arithmetic (AVX512-BF16 or AMX), float16
autocast on CUDA (bfloat16 for training where the GPU supports it) and float32 elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import nn

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
    """bfloat16 in hardware (AVX512-BF16 or AMX), where it is about twice float32's speed.

    oneDNN also emulates bfloat16 on plain AVX-512, which is not faster than float32, so
    "auto" asks for the instruction set itself (CPU feature flags, not the CPU's name).
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
    # No /proc/cpuinfo (macOS, Windows): Apple silicon and recent ARM report bf16 to oneDNN
    # natively; elsewhere stay with float32.
    import platform

    return platform.machine().lower() in ("arm64", "aarch64")


def check_precision(name: str) -> str:
    """The name, normalised; ValueError naming the choices for anything else."""
    value = str(name).strip().lower() if name is not None else "auto"
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    value = aliases.get(value, value)
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    return value


def resolve_precision(name: str, device: torch.device, training: bool = False) -> Precision:
    """Turn a precision name into what runs on ``device``; ValueError where unsupported."""
    value = check_precision(name)
    kind = device.type
    if value == "auto":
        if kind == "cpu":
            value = "bf16" if cpu_bf16_native() else "fp32"
        elif kind == "cuda":
            # bf16 where the GPU has it: on an H200, 512² -> 1024² at 8 x 4 took 1.23 s in
            # bf16 against 1.55 s in fp16 and 1.40 s in fp32 (benchmarks/gpu_chunk.py).
            value = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            value = "fp32"
        return Precision(value, kind)
    if value == "fp16" and kind == "cpu":
        raise ValueError("precision 'fp16' is for GPUs; on a CPU use 'bf16' (where supported), "
                         "'fp32' or 'auto'")
    if value == "bf16":
        supported = {"cpu": cpu_bf16_supported,
                     "cuda": lambda: torch.cuda.is_available() and torch.cuda.is_bf16_supported()}
        if kind in supported and not supported[kind]():
            where = "this CPU (oneDNN reports no bfloat16)" if kind == "cpu" else "this GPU"
            raise ValueError(f"precision 'bf16' is not supported on {where}; supported here: "
                             f"{', '.join(supported_precisions(device))}")
    return Precision(value, kind)


def supported_precisions(device: torch.device) -> list[str]:
    """The precision names that ``resolve_precision`` accepts on ``device``."""
    out = ["auto", "fp32"]
    if device.type == "cpu":
        if cpu_bf16_supported():
            out.append("bf16")
    elif device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            out.append("bf16")
        out.append("fp16")
    else:
        out += ["bf16", "fp16"]
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
