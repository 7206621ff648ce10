"""What differs between TensorRT 8.5 / 8.6 and 10.x, and what each NVIDIA GPU generation runs natively.

Pure Python: ``tensorrt`` is never imported here. Functions that touch TensorRT take its objects (or the
module) as arguments, so all of this is tested on a CPU with stand-ins.

The facts (NVIDIA's release notes and support matrices; the README's GPU table says the same):

- TensorRT 8.5 is the last release for Kepler (SM 3.x) and 8.5.3 the last for Maxwell (SM 5.x) (8.5.2 and
  8.6.0 release notes). NVIDIA's 8.x support matrices say SM 3.0 support was removed, and CUDA 11 (what 8.5's
  builds target, besides 10.2) dropped SM 3.0/3.2: they and anything older get no release this code drives.
- Jetson TX1/Nano (SM 5.3) and TX2 (SM 6.2) stop at JetPack 4.6.x, whose TensorRT is 8.2.1: older than 8.5.
- TensorRT 10 is compiled for SM 7.0 and higher (10.1 support matrix; 10.0.1 fails with "Unsupported SM"
  on SM 6.1, NVIDIA/TensorRT#3826), so Pascal stops at 8.6. Volta's last is 10.4: the 10.5 release notes say
  "NVIDIA Volta support (GPUs with compute capability 7.0) has been removed starting with TensorRT 10.5".
- Blackwell (SM 10.0, 12.0) needs 10.8 or later: the 10.8 release notes are the first that support it.
- On 8.x, ``create_network(0)`` is implicit batch, which the ONNX parser rejects: the EXPLICIT_BATCH flag
  is required there, and 10.x accepts it and ignores it. The 8.5/8.6 ONNX parsers stop at opset 17.
- 8.5, 8.6 and 10.x alike report a failed ``set_input_shape`` / ``set_tensor_address`` / ``set_timing_cache`` /
  ``set_calibration_profile`` by returning False (only ``IOptimizationProfile.set_shape`` raises), and
  ``create_timing_cache`` returns None for a blob it cannot read: ``checked`` turns False into an error.
- TF32 needs SM 8.0+; fast FP16 SM 5.3, 6.0, 6.2 or 7.0+; INT8 arithmetic (DP4A) SM 6.1+. Asked for FP16
  or INT8 on hardware without them, TensorRT warns and builds the engine from FP32 kernels.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Callable

from kinship.engines.precision import Precision
from kinship.errors import first_line

Version = tuple[int, ...]
Capability = tuple[int, int]

SUPPORTED_SERIES = "8.5, 8.6 or 10.x"
# The newest ONNX opset each parser series reads (onnx-tensorrt operators.md for 8.5/8.6).
PARSER_MAX_OPSET = {(8, 5): 17, (8, 6): 17}

NATIVE = "native"
NOT_APPLICABLE = "not applicable"


# --------------------------------------------------------------------------- versions


def parse_version(text: str) -> Version:
    """``'10.3.0.26'`` -> ``(10, 3, 0, 26)``; a tail that is not a number ends it (``'10.7.0.post1'`` -> ``(10, 7, 0)``)."""
    parts = []
    for piece in str(text).strip().split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):  # '0rc1': the number, then stop
            break
    return tuple(parts)


def version_problem(text: str) -> str | None:
    """None when this code drives TensorRT ``text`` (8.5, 8.6 or any 10.x); else why not, in a few words."""
    version = parse_version(text)
    if version[:1] == (10,) or version[:2] in ((8, 5), (8, 6)):
        return None
    return f"tensorrt {text} is installed, this code drives {SUPPORTED_SERIES}"


def opset_problem(tensorrt_version: str, opset: int, model_name: str = "the model") -> str | None:
    """None when this TensorRT's ONNX parser reads ``opset``; else a line saying how to export for it."""
    limit = PARSER_MAX_OPSET.get(parse_version(tensorrt_version)[:2])
    if limit is None or opset <= limit:
        return None
    return (f"{model_name} uses ONNX opset {opset}, TensorRT {tensorrt_version}'s parser reads up to {limit}: "
            f"export it with `kinship export --opset {limit}`")


# --------------------------------------------------------------------------- GPU generations


@dataclass(frozen=True)
class Generation:
    """A GPU generation: its first SM and the first and last TensorRT release for it (None: no bound among the
    releases this code drives). ``only_sm`` marks a Jetson SM inside another generation's range."""

    name: str
    first_sm: Capability
    first_release: Version | None
    last_release: Version | None
    release_text: str  # what to install, for messages and the README
    only_sm: bool = False


# A last release older than 8.5, the oldest this code drives (which release exactly is not tracked here).
BEFORE_DRIVEN: Version = (8, 4)
NO_RELEASE = "a TensorRT older than 8.5, which this code does not drive"

GENERATIONS = (
    Generation("Fermi or older", (0, 0), None, BEFORE_DRIVEN, NO_RELEASE),
    Generation("Kepler SM 3.0/3.2", (3, 0), None, BEFORE_DRIVEN, NO_RELEASE),  # CUDA 11 dropped them
    Generation("Kepler", (3, 5), None, (8, 5), "TensorRT 8.5.3"),
    Generation("Maxwell", (5, 0), None, (8, 5), "TensorRT 8.5.3"),
    Generation("Maxwell (Jetson TX1/Nano)", (5, 3), None, (8, 2),
               "JetPack 4.6.x's TensorRT 8.2.1, which this code does not drive", only_sm=True),
    Generation("Pascal", (6, 0), None, (8, 6), "TensorRT 8.6"),
    Generation("Pascal (Jetson TX2)", (6, 2), None, (8, 2),
               "JetPack 4.6.x's TensorRT 8.2.1, which this code does not drive", only_sm=True),
    Generation("Volta", (7, 0), None, (10, 4), "TensorRT 8.5, 8.6 or 10.0-10.4"),
    Generation("Turing", (7, 5), None, None, "TensorRT 8.5, 8.6 or 10.x"),
    Generation("Ampere to Hopper", (8, 0), None, None, "TensorRT 8.5, 8.6 or 10.x"),
    # Blackwell and anything newer: an SM after 12.0 may need a later release still, which this table cannot know.
    Generation("Blackwell", (10, 0), (10, 8), None, "TensorRT 10.8 or later"),
)


def parse_capability(value) -> Capability:
    """``(5, 2)``, ``'5.2'`` or ``'sm_52'`` -> ``(5, 2)``; anything else is a ValueError naming it."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+)\.(\d+)", text) or re.fullmatch(r"sm_?(\d+)(\d)", text)
    if not match:
        raise ValueError(f"not a compute capability: {value!r} (expected e.g. 5.2)")
    return int(match.group(1)), int(match.group(2))


def sm_text(capability) -> str:
    major, minor = parse_capability(capability)
    return f"SM {major}.{minor}"


def generation(capability) -> Generation:
    """The generation of an SM: a Jetson SM's own row where it has one, else the last row whose range it reaches."""
    capability = parse_capability(capability)
    exact = [g for g in GENERATIONS if g.only_sm and g.first_sm == capability]
    if exact:
        return exact[0]
    return [g for g in GENERATIONS if not g.only_sm and g.first_sm <= capability][-1]


def _within(version: Version, first: Version | None, last: Version | None) -> bool:
    """Whether ``version`` lies in [first, last], each bound compared on as many parts as it has (10.4 takes 10.4.x)."""
    if first is not None and version[: len(first)] < first:
        return False
    return last is None or version[: len(last)] <= last


def release_supports(tensorrt_version: str, capability) -> bool:
    """Whether TensorRT ``tensorrt_version`` (one this code drives) runs on a GPU of ``capability``."""
    if version_problem(tensorrt_version):
        return False
    gen = generation(capability)
    return _within(parse_version(tensorrt_version), gen.first_release, gen.last_release)


def gpu_problem(tensorrt_version: str, gpu_name: str, capability) -> str | None:
    """None when the installed TensorRT supports this GPU; else one line naming the GPU, its SM, the
    installed TensorRT and the release that supports it."""
    problem = version_problem(tensorrt_version)
    if problem:
        return problem
    if release_supports(tensorrt_version, capability):
        return None
    gen = generation(capability)
    return (f"{gpu_name} ({sm_text(capability)}, {gen.name}) needs {gen.release_text}; "
            f"TensorRT {tensorrt_version} is installed and does not support it")


# --------------------------------------------------------------------------- precisions per SM


def fp32_kernels(capability) -> str:
    return f"runs FP32 kernels on {sm_text(capability)}"


def has_tf32(capability) -> bool:
    return parse_capability(capability) >= (8, 0)


def has_fast_fp16(capability) -> bool:
    capability = parse_capability(capability)
    return capability in ((5, 3), (6, 0), (6, 2)) or capability >= (7, 0)


def has_int8(capability) -> bool:
    return parse_capability(capability) >= (6, 1)  # DP4A


def platform_flags(builder) -> dict[str, bool | None]:
    """``platform_has_tf32`` / ``_fast_fp16`` / ``_fast_int8`` of a TensorRT builder (None where it lacks one:
    TensorRT 11 removed them). Read with deprecation warnings silenced: only the answer matters here."""
    names = {"tf32": "platform_has_tf32", "fp16": "platform_has_fast_fp16", "int8": "platform_has_fast_int8"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        values = {key: getattr(builder, attribute, None) for key, attribute in names.items()}
    return {key: None if value is None else bool(value) for key, value in values.items()}


def precision_support(capability, builder=None) -> dict[str, str]:
    """Per build variant, what the GPU does with it: ``"native"``, ``"runs FP32 kernels on SM x.y"`` (TensorRT
    builds it anyway, from FP32 kernels) or ``"not applicable"`` (TF32 before Ampere, as on a CPU: a TF32
    build there is the FP32 engine). A builder's ``platform_has_*`` answers win over the table."""
    table = {"tf32": has_tf32(capability), "fp16": has_fast_fp16(capability), "int8": has_int8(capability)}
    flags = platform_flags(builder) if builder is not None else {}
    native = {key: flags[key] if flags.get(key) is not None else value for key, value in table.items()}
    slow = fp32_kernels(capability)
    return {
        "fp32": NATIVE,
        "tf32": NATIVE if native["tf32"] else NOT_APPLICABLE,
        "fp16": NATIVE if native["fp16"] else slow,
        "int8": NATIVE if native["int8"] else slow,
        "int8-qdq": NATIVE if native["int8"] else slow,
    }


def precision_reason(variant: str, capability, gpu_name: str = "this GPU") -> str:
    """Why ``variant`` is not native on this SM, in one sentence (empty when it is)."""
    sm = sm_text(capability)
    if variant == "tf32" and not has_tf32(capability):
        return (f"TF32 needs tensor cores of SM 8.0+ (Ampere); {gpu_name} is {sm}, where TensorRT disables TF32 "
                "and a TF32 build is the FP32 engine")
    if variant == "fp16" and not has_fast_fp16(capability):
        return (f"{gpu_name} ({sm}) has no fast FP16 (SM 5.3, 6.0, 6.2 or 7.0+): TensorRT builds the FP16 engine "
                "from FP32 kernels")
    if Precision.parse(variant).is_int8 and not has_int8(capability):
        return (f"{gpu_name} ({sm}) has no INT8 arithmetic (DP4A needs SM 6.1+): TensorRT builds the INT8 engine "
                "from FP32 kernels")
    return ""


# --------------------------------------------------------------------------- API differences


def network_flags(trt) -> int:
    """``create_network``'s flags: EXPLICIT_BATCH where the enum still has it (required on 8.x, ignored on 10.x)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    return 0 if flag is None else 1 << int(flag)


def _describe(value) -> str:
    if isinstance(value, (str, int, float, bool, tuple, list)) or value is None:
        return repr(value if not isinstance(value, list) else tuple(value))
    return type(value).__name__


def checked(call: Callable, *args, what: str | None = None):
    """Call a TensorRT setter and return its result. 8.5, 8.6 and 10.x report failure by returning False (only
    ``IOptimizationProfile.set_shape`` raises): either way the caller gets a RuntimeError naming the call and its
    arguments."""
    name = what or getattr(call, "__name__", "TensorRT call")
    shown = ", ".join(_describe(a) for a in args)
    try:
        result = call(*args)
    except Exception as error:
        raise RuntimeError(f"TensorRT {name}({shown}) failed: {first_line(error)}") from error
    if result is False:
        raise RuntimeError(f"TensorRT {name}({shown}) returned False (see the TensorRT log above)")
    return result


def set_int8_calibrator(config, calibrator, profile) -> None:
    """Attach an INT8 calibrator and the profile whose opt shapes it calibrates at (required with dynamic
    shapes). Both are deprecated from 10.1 (and gone in 11): the warning says nothing a user can act on here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        config.int8_calibrator = calibrator
        checked(config.set_calibration_profile, profile)


def release_key(tensorrt_version: str, gpu_name: str, capability) -> str:
    """``tensorrt-<version>-<gpu>-sm<NN>``: what a timing cache or calibration table is valid for (tactics and
    tables written by one TensorRT on one GPU are not valid on another), safe in a file name."""
    major, minor = parse_capability(capability)
    gpu = re.sub(r"[^a-z0-9]+", "-", str(gpu_name).lower()).strip("-") or "gpu"
    version = re.sub(r"[^0-9A-Za-z.]+", "-", str(tensorrt_version)).strip("-")
    return f"tensorrt-{version}-{gpu}-sm{major}{minor}"


def timing_cache_name(tensorrt_version: str, gpu_name: str, capability) -> str:
    """The timing cache's file name, keyed by TensorRT version, GPU and SM (``release_key``)."""
    return f"{release_key(tensorrt_version, gpu_name, capability)}.timing-cache"


def attach_timing_cache(config, blob: bytes, on_mismatch: Callable[[str], None]):
    """Give ``config`` the timing cache in ``blob``; one TensorRT refuses (another version or device, or a damaged
    file) is replaced by a fresh cache and reported through ``on_mismatch``. Returns the cache attached."""
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception:  # 8.5 and 10.x return None for a blob they cannot read; a raise is treated the same
            cache = None
        if cache is not None and config.set_timing_cache(cache, False):
            return cache
        on_mismatch(f"the timing cache ({len(blob)} bytes) does not match this TensorRT and GPU: starting a fresh one")
    cache = checked(config.create_timing_cache, b"", what="create_timing_cache")
    checked(config.set_timing_cache, cache, False)
    return cache
