"""--amp by architecture: the decision is a pure function of (backend, ROCm architecture / CUDA capability), checked
with a table on the CPU; choose_precision's wiring is checked with torch's GPU queries stood in for."""

from __future__ import annotations

import types

import pytest
import torch

from kinship.errors import UserError
from kinship.train import amp_choice, choose_precision

# (--amp, backend, gcnArchName, compute capability, torch.cuda.is_bf16_supported()) -> autocast dtype
TABLE = [
    (("auto", "cpu", "", None, False), None),
    (("on", "cpu", "", None, False), "bf16"),  # the old rule: bf16 on a CPU when asked
    (("fp16", "cpu", "", None, False), "fp16"),
    (("auto", "rocm", "gfx1030", None, True), "fp16"),  # RX 6900 XT (RDNA2): no bf16 matrix units
    (("auto", "rocm", "gfx1010:xnack-", None, True), "fp16"),  # RDNA1
    (("auto", "rocm", "gfx1031", None, True), "fp16"),
    (("auto", "rocm", "gfx90a:sramecc+:xnack-", None, True), "bf16"),  # MI200 (CDNA2)
    (("auto", "rocm", "gfx942", None, True), "bf16"),  # MI300 (CDNA3)
    (("auto", "rocm", "gfx1100", None, True), "bf16"),  # RX 7900 (RDNA3)
    (("auto", "rocm", "gfx906", None, True), "fp16"),  # Vega 20: not in the fast list
    (("auto", "rocm", "", None, False), "fp16"),
    (("auto", "cuda", "", (5, 2), False), "fp16"),  # Tesla M40
    (("auto", "cuda", "", (7, 0), True), "fp16"),  # V100: tensor cores, but fp16 ones
    (("auto", "cuda", "", (7, 5), True), "fp16"),  # T4
    (("auto", "cuda", "", (8, 0), True), "bf16"),  # A100
    (("auto", "cuda", "", (8, 6), True), "bf16"),
    (("auto", "cuda", "", (9, 0), True), "bf16"),  # H100
    (("on", "rocm", "gfx1030", None, True), "bf16"),  # the old rule picked bf16 on RDNA2: kept only as the alias
    (("on", "cuda", "", (6, 1), False), "fp16"),
    (("bf16", "cuda", "", (7, 5), False), "bf16"),  # as asked
    (("fp16", "cuda", "", (9, 0), True), "fp16"),
    (("off", "cuda", "", (8, 0), True), None),
    (("off", "rocm", "gfx942", None, True), None),
]


@pytest.mark.parametrize("arguments, expected", TABLE)
def test_amp_by_architecture(arguments, expected):
    dtype, why = amp_choice(*arguments)
    assert dtype == expected and why
    if arguments[0] == "auto" and arguments[1] != "cpu":
        assert ("has fast bf16" in why) == (expected == "bf16")


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
    (None, "", (5, 2), torch.float16, True),
    (None, "", (8, 0), torch.bfloat16, False),
])
def test_choose_precision_reads_the_gpu(monkeypatch, hip, arch, capability, dtype, scaled):
    """The GPU queries stood in for: the ROCm architecture or CUDA capability reaches the decision."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(gcnArchName=arch))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # must not decide auto
    precision = choose_precision("auto", "auto")
    assert precision.backend == ("rocm" if hip else "cuda") and precision.device.type == "cuda"
    assert precision.autocast_dtype == dtype and precision.scale_loss is scaled
    assert precision.why.startswith("auto: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the refusal cannot be observed")
def test_cuda_asked_without_a_gpu():
    with pytest.raises(UserError, match="--device cuda"):
        choose_precision("cuda", "auto")
