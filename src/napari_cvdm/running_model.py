"""The model as predict() runs it: an eval-mode copy on the device in its fast layout.

predict() never modifies the caller's model (no weights moved, converted or switched to
eval mode and back), so threads can share one model. The copy is cached per model, device
and layout, and rebuilt when any weight changes (training, loading new weights).
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch
from torch import nn

from .model.cvdm import CVDM

_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _tensors(model: nn.Module):
    return (*model.parameters(), *model.buffers())


def _weights_key(model: nn.Module, device: torch.device, channels_last: bool) -> tuple:
    """Changes whenever a weight is replaced or modified in place, or the target changes."""
    return (str(device), channels_last) + tuple(
        (t.data_ptr(), t._version, t.dtype, str(t.device), tuple(t.shape))
        for t in _tensors(model))


def _ready(model: CVDM, device: torch.device, channels_last: bool) -> bool:
    """Whether ``model`` can run as it is: eval mode, on ``device``, in the wanted layout."""
    if model.training:
        return False
    for t in _tensors(model):
        if t.device != device or (t.is_floating_point() and t.dtype != torch.float32):
            return False
        if channels_last and t.dim() == 4 and \
                not t.is_contiguous(memory_format=torch.channels_last):
            return False
    return True


def _copy(model: CVDM, device: torch.device, channels_last: bool) -> CVDM:
    memo: dict[int, object] = {}
    with torch.inference_mode(False), torch.no_grad():
        for t in _tensors(model):
            fmt = torch.channels_last if channels_last and t.dim() == 4 \
                else torch.preserve_format
            # float32 weights whatever the caller's copy holds (model.bfloat16(), .double()):
            # the arithmetic is chosen by precision=, not by the weights' type
            dtype = torch.float32 if t.is_floating_point() else t.dtype
            new = t.detach().to(device, dtype=dtype, memory_format=fmt, copy=True)
            memo[id(t)] = nn.Parameter(new, requires_grad=False) \
                if isinstance(t, nn.Parameter) else new
        net = copy.deepcopy(model, memo)
    return net.eval()


def running_model(model: CVDM, device: torch.device) -> CVDM:
    """``model`` ready to run on ``device``: itself if it already is, else a cached copy.

    On the CPU the weights are channels-last (NHWC): with NHWC activations oneDNN's fast
    convolutions run without reorders. Weights of another floating type (a model the
    caller turned to bfloat16 or float64) run as a float32 copy.
    """
    channels_last = device.type == "cpu"
    if _ready(model, device, channels_last):
        return model
    key = _weights_key(model, device, channels_last)
    with _lock:
        cached = _copies.get(model)
        if cached is not None and cached[0] == key:
            return cached[1]
    net = _copy(model, device, channels_last)
    with _lock:
        _copies[model] = (key, net)
    return net
