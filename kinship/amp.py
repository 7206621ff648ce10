"""Training's mixed-precision policy: which autocast type (fp16 with a loss scaler, bf16, or none) ``--amp`` means on
this device, decided from the backend and the GPU's architecture alone (the tables below), and the ``Precision``
the training loop and the scorers run under."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from kinship.errors import UserError


@dataclass
class Precision:
    """Where and how arithmetic runs: device, autocast dtype (None = fp32), whether to scale loss, and why."""

    device: torch.device
    backend: str  # "cpu", "cuda" or "rocm"
    autocast_dtype: torch.dtype | None
    scale_loss: bool
    why: str = ""  # how --amp was resolved on this device

    def autocast(self):
        """The autocast context for a forward pass: a no-op when training in fp32."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        """One line for logs and metrics: backend, device, AMP type, scaler and why."""
        amp = "off" if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", "")
        scaler = " + grad scaler" if self.scale_loss else ""
        return f"{self.backend} ({self.device}), AMP {amp}{scaler}" + (f" ({self.why})" if self.why else "")


AMP_MODES = ("auto", "off", "fp16", "bf16", "on")  # "on": AMP on in the device's fast type, off never (bf16 on a CPU)
# ROCm architectures with fast bf16 matrix arithmetic: CDNA2 (gfx90a), CDNA3 (gfx94x), CDNA4 (gfx950), RDNA3 (gfx11xx)
# and RDNA4 (gfx120x). RDNA1 and RDNA2 (gfx101x, gfx103x: the RX 6900 XT is gfx1030) have none: fp16 with a scaler is
# what speeds them up.
ROCM_FAST_BF16 = ("gfx90a", "gfx94", "gfx950", "gfx11", "gfx120")
# CUDA SMs before Volta with fast fp16 (Jetson TX1/Nano, P100, Jetson TX2). The others before 7.0 (Maxwell 5.0/5.2
# such as the M40, Pascal 6.1 such as the P40) run fp16 at a fraction of their fp32 rate: AMP buys no speed there.
CUDA_FAST_FP16 = ((5, 3), (6, 0), (6, 2))


def _cuda_fast_fp16(capability: tuple[int, int]) -> bool:
    return tuple(capability) in CUDA_FAST_FP16 or tuple(capability) >= (7, 0)


def _fast_type(backend: str, arch: str, capability: tuple[int, int] | None) -> tuple[str | None, str]:
    """(``"bf16"``, ``"fp16"`` or None where neither is fast, why) for a GPU, by architecture alone: never by
    ``torch.cuda.is_bf16_supported()``, which says yes on every ROCm device and, through emulation, on T4/V100."""
    if backend == "rocm":
        base = arch.split(":")[0].strip().lower()
        if base.startswith(ROCM_FAST_BF16):
            return "bf16", f"{base} has fast bf16"
        return "fp16", f"{base or 'this ROCm GPU'} has no fast bf16 (RDNA1/RDNA2 and older)"
    shown = f"SM {capability[0]}.{capability[1]}" if capability is not None else "this GPU"
    if capability is not None and tuple(capability) >= (8, 0):
        return "bf16", f"{shown} has fast bf16"
    if capability is not None and not _cuda_fast_fp16(capability):
        return None, f"{shown} has no fast fp16 (nor bf16): AMP buys no speed there"
    return "fp16", f"{shown} has no fast bf16 (before SM 8.0)"


def amp_choice(amp: str, backend: str, arch: str = "", capability: tuple[int, int] | None = None
               ) -> tuple[str | None, str]:
    """(``"fp16"``, ``"bf16"`` or None for FP32, why) for ``--amp`` on a device: a pure function of the backend
    (``cpu``, ``cuda``, ``rocm``) and the ROCm architecture name (``gcnArchName``, e.g. ``gfx1030``) or the CUDA
    compute capability. fp16 always trains with a scaler.

    ``auto``: off on a CPU (autocast rarely pays there); bf16 where it is fast (CUDA SM 8.0+, ROCm gfx90a/gfx94x/
    gfx950/gfx11xx/gfx120x); off on CUDA GPUs without fast fp16 (SM 5.0/5.2, 6.1 and older); fp16 elsewhere.
    ``on``: AMP on whatever the GPU: the same type as auto, and fp16 where auto chooses off (bf16 on a CPU).
    ``fp16``/``bf16``/``off`` are taken as asked.
    """
    if amp not in AMP_MODES:
        raise UserError(f"unknown amp mode {amp!r}: choose auto, off, fp16 or bf16 (on: AMP in the GPU's fast type)")
    if amp in ("off", "fp16", "bf16"):
        return (None if amp == "off" else amp), f"--amp {amp}"
    if backend == "cpu":
        return ("bf16", "--amp on: bf16 on the CPU") if amp == "on" else (None, "auto: AMP off on a CPU")
    dtype, why = _fast_type(backend, arch, capability)
    if amp == "auto":
        return dtype, f"auto: {why}"
    return (dtype or "fp16"), f"--amp on: {why}"


def _gpu_arch() -> tuple[str, str, tuple[int, int] | None]:
    """(backend, ROCm architecture name, CUDA compute capability) of GPU 0."""
    if getattr(torch.version, "hip", None):
        return "rocm", str(getattr(torch.cuda.get_device_properties(0), "gcnArchName", "")), None
    return "cuda", "", tuple(torch.cuda.get_device_capability(0))


def choose_precision(device: str, amp: str) -> Precision:
    """Resolve ``--device`` and ``--amp`` (``amp_choice``): on GPUs fp16 + scaler, bf16 or off by architecture, off
    on a CPU unless asked."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {device!r}: choose auto, cpu or cuda")
    amp_choice(amp, "cpu")  # a bad --amp fails before looking for a GPU
    use_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_gpu and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA or ROCm device")
    backend, arch, capability = _gpu_arch() if use_gpu else ("cpu", "", None)
    dtype, why = amp_choice(amp, backend, arch, capability)
    autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype)
    return Precision(torch.device("cuda" if use_gpu else "cpu"), backend, autocast, scale_loss=dtype == "fp16", why=why)
