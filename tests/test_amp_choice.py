"""--amp by architecture: the decision is a pure function of (backend, ROCm architecture / CUDA capability), checked
with a table on the CPU; choose_precision's wiring is checked with torch's GPU queries stood in for."""

from __future__ import annotations

import types

import pytest
import torch

from kinship.errors import UserError
from kinship.train import amp_choice, choose_precision

# (--amp, backend, gcnArchName, compute capability) -> autocast dtype
TABLE = [
    (("auto", "cpu", "", None), None),
    (("on", "cpu", "", None), "bf16"),  # bf16 on a CPU when asked
    (("fp16", "cpu", "", None), "fp16"),
    (("auto", "rocm", "gfx1030", None), "fp16"),  # RX 6900 XT (RDNA2): no bf16 matrix units
    (("auto", "rocm", "gfx1010:xnack-", None), "fp16"),  # RDNA1
    (("auto", "rocm", "gfx1031", None), "fp16"),
    (("auto", "rocm", "gfx90a:sramecc+:xnack-", None), "bf16"),  # MI200 (CDNA2)
    (("auto", "rocm", "gfx942", None), "bf16"),  # MI300 (CDNA3)
    (("auto", "rocm", "gfx950", None), "bf16"),  # MI350 (CDNA4)
    (("auto", "rocm", "gfx1100", None), "bf16"),  # RX 7900 (RDNA3)
    (("auto", "rocm", "gfx1200", None), "bf16"),  # RX 9060 (RDNA4)
    (("auto", "rocm", "gfx1201", None), "bf16"),  # RX 9070 (RDNA4)
    (("auto", "rocm", "gfx906", None), "fp16"),  # Vega 20: not in the fast list
    (("auto", "rocm", "", None), "fp16"),
    (("auto", "cuda", "", (3, 7)), None),  # K80: no fast fp16
    (("auto", "cuda", "", (5, 2)), None),  # Tesla M40: fp16 at a fraction of fp32, AMP buys nothing
    (("auto", "cuda", "", (5, 3)), "fp16"),  # Jetson TX1/Nano: fast fp16
    (("auto", "cuda", "", (6, 0)), "fp16"),  # P100
    (("auto", "cuda", "", (6, 1)), None),  # P40 / GTX 1080: fp16 at 1/64 of fp32
    (("auto", "cuda", "", (6, 2)), "fp16"),  # Jetson TX2
    (("auto", "cuda", "", (7, 0)), "fp16"),  # V100: tensor cores, but fp16 ones
    (("auto", "cuda", "", (7, 5)), "fp16"),  # T4
    (("auto", "cuda", "", (8, 0)), "bf16"),  # A100
    (("auto", "cuda", "", (8, 6)), "bf16"),
    (("auto", "cuda", "", (9, 0)), "bf16"),  # H100
    # on: AMP in the architecture's fast type, never by torch.cuda.is_bf16_supported() (true on every ROCm
    # device, and through emulation on T4/V100)
    (("on", "rocm", "gfx1030", None), "fp16"),
    (("on", "rocm", "gfx942", None), "bf16"),
    (("on", "cuda", "", (7, 5)), "fp16"),
    (("on", "cuda", "", (7, 0)), "fp16"),
    (("on", "cuda", "", (8, 0)), "bf16"),
    (("on", "cuda", "", (6, 1)), "fp16"),  # asked for: on, though it buys no speed there (the reason says so)
    (("on", "cuda", "", (5, 2)), "fp16"),
    (("bf16", "cuda", "", (7, 5)), "bf16"),  # as asked
    (("fp16", "cuda", "", (9, 0)), "fp16"),
    (("fp16", "cuda", "", (5, 2)), "fp16"),
    (("off", "cuda", "", (8, 0)), None),
    (("off", "rocm", "gfx942", None), None),
]


@pytest.mark.parametrize("arguments, expected", TABLE)
def test_amp_by_architecture(arguments, expected):
    dtype, why = amp_choice(*arguments)
    assert dtype == expected and why
    if arguments[0] in ("auto", "on") and arguments[1] != "cpu":
        assert ("has fast bf16" in why) == (expected == "bf16")
        capability = arguments[3]
        slow = capability is not None and capability < (7, 0) and capability not in ((5, 3), (6, 0), (6, 2))
        assert ("no fast fp16" in why and "buys no speed" in why) == slow


def test_unknown_amp_mode_is_one_line_naming_it():
    with pytest.raises(UserError, match=r"unknown amp mode 'fast': choose auto, off, fp16 or bf16") as error:
        choose_precision("cpu", "fast")
    assert "\n" not in str(error.value)


def test_choose_precision_on_this_cpu():
    assert choose_precision("cpu", "auto").autocast_dtype is None
    on = choose_precision("cpu", "on")
    assert on.autocast_dtype == torch.bfloat16 and not on.scale_loss
    fp16 = choose_precision("cpu", "fp16")
    assert fp16.autocast_dtype == torch.float16 and fp16.scale_loss and "AMP float16 + grad scaler" in fp16.describe()


@pytest.mark.parametrize("hip, arch, capability, dtype, scaled", [
    ("6.2", "gfx1030", None, torch.float16, True),
    ("6.2", "gfx90a:sramecc+:xnack-", None, torch.bfloat16, False),
    (None, "", (5, 2), None, False),  # Tesla M40: no fast fp16, AMP off
    (None, "", (7, 5), torch.float16, True),
    (None, "", (8, 0), torch.bfloat16, False),
])
def test_choose_precision_reads_the_gpu(monkeypatch, hip, arch, capability, dtype, scaled):
    """The GPU queries stood in for: the ROCm architecture or CUDA capability reaches the decision."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(gcnArchName=arch))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # must decide neither auto nor on
    precision = choose_precision("auto", "auto")
    assert precision.backend == ("rocm" if hip else "cuda") and precision.device.type == "cuda"
    assert precision.autocast_dtype == dtype and precision.scale_loss is scaled
    assert precision.why.startswith("auto: ")
    on = choose_precision("auto", "on")
    assert on.autocast_dtype == (dtype or torch.float16) and on.why.startswith("--amp on: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the refusal cannot be observed")
def test_cuda_asked_without_a_gpu():
    with pytest.raises(UserError, match="--device cuda"):
        choose_precision("cuda", "auto")
