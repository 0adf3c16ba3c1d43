"""Where and in what precision the step runs: the device, autocast, the gradient scaler, compile.

:class:`Precision` is the step's one precision object: ``with precision.autocast():`` around the
forward work, and ``precision.backward_and_step(loss, optimizer, scheduler)`` for fp32, bf16 and
fp16 alike (fp16 scales the loss and skips a step whose gradients overflow; bf16 has float32's
range and needs no scaler), so the step has no precision branches. The checks refuse, with the
fix, a device, precision or compiler this machine cannot give.
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from contextlib import nullcontext

import torch
from torch import Tensor

from .config import PRECISIONS, ConfigError

#: Each of ``train.precision``'s choices (:data:`supercm.config.PRECISIONS`) → the autocast dtype of
#: the step (None: no autocast).
AUTOCAST_DTYPES = {name: {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name] for name in PRECISIONS}

#: An fp16 run whose gradient scale fell below this has skipped every step for a long while (from
#: the initial 2¹⁶, 32 skips in a row): it diverged, and is stopped like a run whose loss is NaN.
MIN_LOSS_SCALE = 2.0 ** -16


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a device this machine has (``auto``: CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"config key 'train.device' must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); choose one of them or auto"
            )
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device={name!r} but MPS is not available here; use train.device=cpu or auto")
    return dev


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, with the fix, a precision the device cannot run."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support; "
            f"use train.precision=fp16 (or fp32)"
        )


def native_cpu_half(dtype: torch.dtype) -> bool:
    """Whether this CPU runs ``dtype`` (bfloat16 / float16) convolutions and matmuls natively (oneDNN's
    check: AVX512-BF16 / AVX512-FP16 or AMX). Without it PyTorch falls back to a slow reference
    convolution (``aten::_slow_conv2d_*``): 17× slower than float32 for the WRN-28-2 step and 90× for
    one 3×3 convolution on the project's AVX2 machine (BENCHMARKS.md, issue 21)."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError, TypeError):
        return True  # cannot tell: no warning


def warn_if_emulated(precision: str, device: torch.device) -> None:
    """Warn (once per trainer) when ``train.precision`` would run emulated on this CPU, with the fix."""
    dtype = AUTOCAST_DTYPES[precision]
    if device.type == "cpu" and dtype is not None and not native_cpu_half(dtype):
        measured = ": measured 17× slower than fp32 for the WRN-28-2 step" if dtype == torch.bfloat16 else ""
        warnings.warn(
            f"train.precision={precision} on this CPU ({torch.backends.cpu.get_cpu_capability()}, no native "
            f"{'bfloat16' if dtype == torch.bfloat16 else 'float16'}) runs convolutions through PyTorch's slow "
            f"reference path{measured}; use train.precision=fp32 here "
            f"(bf16 pays on CPUs with AMX or AVX512-BF16, and on GPUs)", stacklevel=3)


def check_compile(device: torch.device) -> None:
    """Refuse, with the fix, ``train.compile=true`` where torch.compile cannot build kernels: on the
    CPU it needs a C++ compiler, on CUDA the Triton package (both come with a usual GPU install)."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ConfigError("train.compile=true on the CPU needs a C++ compiler (g++ or clang++) on PATH; "
                          "install one (e.g. apt install g++) or set train.compile=false")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ConfigError("train.compile=true on CUDA needs the triton package; pip install triton, "
                          "or set train.compile=false")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.compile=true is supported on cpu and cuda, not {device.type}; set train.compile=false")


def _grad_scaler(device: torch.device):
    """A gradient scaler for fp16 on ``device`` (torch.amp.GradScaler; per-device classes before 2.3)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    return torch.cuda.amp.GradScaler() if device.type == "cuda" else torch.cpu.amp.GradScaler()


class Precision:
    """``train.precision`` on ``device``: the autocast context and the backward-and-step call."""

    def __init__(self, precision: str, device: torch.device):
        check_precision(precision, device)
        warn_if_emulated(precision, device)
        self.device = device
        self.dtype = AUTOCAST_DTYPES[precision]
        self.scaler = _grad_scaler(device) if precision == "fp16" else None

    @property
    def skips_nonfinite(self) -> bool:
        """Whether a non-finite loss is no error but a skipped step (fp16's gradient scaler)."""
        return self.scaler is not None

    def autocast(self):
        """Autocast to the precision's dtype (a no-op context for fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: Tensor, optimizer: torch.optim.Optimizer, scheduler) -> None:
        """Gradients of ``loss`` (set, not added), one optimizer step, one schedule step."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()  # data-parallel: DistributedDataParallel averages the gradients meanwhile
            optimizer.step()
            scheduler.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # skipped when the gradients hold NaN or inf
        self.scaler.update()
        with warnings.catch_warnings():
            # The schedule follows the iteration, skipped or not; a skipped first step makes
            # LambdaLR warn that optimizer.step() was not called.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
            scheduler.step()

    def collapsed(self) -> float | None:
        """fp16: the gradient scale when it fell below :data:`MIN_LOSS_SCALE` (the run diverged), else None."""
        if self.scaler is not None and self.scaler.is_enabled() and self.scaler.get_scale() < MIN_LOSS_SCALE:
            return self.scaler.get_scale()
        return None

    def state_dict(self) -> dict:
        return {} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state["grad_scaler"])
