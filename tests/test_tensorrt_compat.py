"""The TensorRT 8.5/8.6/10.x compatibility layer: versions, GPU generations, precisions per SM, and the API
differences (network flags, checked setters, calibrator, timing cache), all with stand-ins on the CPU."""

from __future__ import annotations

import enum
import warnings

import pytest

from kinship.engines import tensorrt_compat as compat


@pytest.mark.parametrize("text, parsed", [
    ("10.3.0.26", (10, 3, 0, 26)), ("8.5.3.1", (8, 5, 3, 1)), ("10.7.0.post1", (10, 7, 0)), ("8.6.1", (8, 6, 1)),
    ("10.0.0b6", (10, 0, 0)), ("", ()), ("unknown", ()),
])
def test_parse_version(text, parsed):
    assert compat.parse_version(text) == parsed


@pytest.mark.parametrize("text, supported", [
    ("8.5.3.1", True), ("8.5.1.7", True), ("8.6.1", True), ("10.0.1", True), ("10.16.1.11", True),
    ("8.4.3.1", False), ("9.3.0.post12.dev1", False), ("11.0.0.114", False), ("7.2.3", False), ("", False),
])
def test_only_8_5_8_6_and_10_are_driven(text, supported):
    problem = compat.version_problem(text)
    assert (problem is None) == supported
    if problem:
        assert text in problem and "8.5, 8.6 or 10.x" in problem


# (capability, TensorRT version, supported?): NVIDIA's support matrices and release notes, as in tensorrt_compat
SUPPORT_TABLE = [
    ((1, 3), "8.5.3.1", False), ((2, 1), "8.5.3.1", False),  # Tesla, Fermi: nothing this code drives
    ((3, 0), "8.5.3.1", False), ((3, 2), "8.5.3.1", False),  # SM 3.0/3.2: CUDA 11 dropped them
    ((3, 5), "8.5.3.1", True), ((3, 7), "8.5.3.1", True), ((3, 7), "8.6.1", False),  # Kepler: 8.5 is the last
    ((5, 0), "8.5.1.7", True), ((5, 2), "8.5.3.1", True), ((5, 2), "8.6.0", False), ((5, 2), "10.3.0", False),
    ((5, 3), "8.5.3.1", False), ((5, 3), "8.6.1", False),  # Jetson TX1/Nano: JetPack 4.6.x, TensorRT 8.2.1
    ((6, 2), "8.5.3.1", False), ((6, 2), "8.6.1", False), ((6, 2), "10.3.0", False),  # Jetson TX2: the same
    ((6, 0), "8.6.1", True), ((6, 1), "8.5.3.1", True), ((6, 1), "8.6.1", True), ((6, 1), "10.0.1", False),
    ((7, 0), "8.6.1", True), ((7, 0), "10.4.0", True), ((7, 0), "10.5.0", False), ((7, 0), "10.16.1.11", False),
    ((7, 5), "8.5.3.1", True), ((7, 5), "10.16.1.11", True),
    ((8, 0), "10.3.0", True), ((8, 6), "8.6.1", True), ((8, 9), "10.3.0", True), ((9, 0), "10.16.1.11", True),
    ((10, 0), "8.6.1", False), ((10, 0), "10.0.1", False), ((10, 0), "10.7.0", False),  # Blackwell: 10.8 first
    ((10, 0), "10.8.0", True), ((12, 0), "8.5.3.1", False), ((12, 0), "10.7.0.23", False),
    ((12, 0), "10.8.0.43", True), ((12, 0), "10.16.1.11", True),
    ((8, 0), "11.0.0.114", False), ((8, 0), "8.4.3.1", False),  # versions this code does not drive
]


@pytest.mark.parametrize("capability, version, supported", SUPPORT_TABLE)
def test_release_supports_sm(capability, version, supported):
    assert compat.release_supports(version, capability) is supported
    problem = compat.gpu_problem(version, "Some GPU", capability)
    assert (problem is None) == supported


def test_gpu_problem_is_one_line_naming_gpu_sm_installed_and_needed_release():
    problem = compat.gpu_problem("10.3.0", "Tesla M40", (5, 2))
    assert "\n" not in problem
    for part in ("Tesla M40", "SM 5.2", "Maxwell", "TensorRT 10.3.0", "TensorRT 8.5.3"):
        assert part in problem
    assert "TensorRT 8.6" in compat.gpu_problem("10.0.1", "Tesla P40", "6.1")
    assert "10.0-10.4" in compat.gpu_problem("10.5.0", "Tesla V100", "sm_70")
    assert "TensorRT 10.8 or later" in compat.gpu_problem("10.7.0", "NVIDIA GeForce RTX 5090", (12, 0))
    assert "TensorRT 8.2.1" in compat.gpu_problem("8.5.3.1", "NVIDIA Tegra X1", (5, 3))


def test_every_generation_has_a_first_and_last_release_in_order():
    """Each row's bounds: a first release (None: older than 8.5) not after its last (None: still supported)."""
    for gen in compat.GENERATIONS:
        if gen.first_release is not None and gen.last_release is not None:
            assert gen.first_release <= gen.last_release, gen.name
    assert compat.generation((10, 0)).first_release == (10, 8)
    assert compat.generation((7, 0)).last_release == (10, 4)


def test_generation_and_capability_parsing():
    capabilities = ((2, 1), (3, 2), (3, 5), (5, 2), (5, 3), (6, 1), (6, 2), (7, 0), (7, 2), (7, 5), (8, 6), (9, 0),
                    (10, 0), (12, 0))
    assert [compat.generation(c).name for c in capabilities] == [
        "Fermi or older", "Kepler SM 3.0/3.2", "Kepler", "Maxwell", "Maxwell (Jetson TX1/Nano)", "Pascal",
        "Pascal (Jetson TX2)", "Volta", "Volta", "Turing", "Ampere to Hopper", "Ampere to Hopper", "Blackwell",
        "Blackwell"]
    assert compat.parse_capability("5.2") == compat.parse_capability("sm_52") == compat.parse_capability([5, 2]) == (5, 2)
    assert compat.parse_capability("sm_120") == (12, 0)
    with pytest.raises(ValueError, match="'fast'"):
        compat.parse_capability("fast")


SLOW = "runs FP32 kernels on SM {}"
# capability -> (tf32, fp16, int8) as the table gives them
PRECISION_TABLE = {
    (5, 2): ("not applicable", SLOW.format("5.2"), SLOW.format("5.2")),  # Tesla M40: only FP32 is real
    (5, 3): ("not applicable", "native", SLOW.format("5.3")),  # Jetson TX1
    (6, 0): ("not applicable", "native", SLOW.format("6.0")),  # P100: fast FP16, no DP4A
    (6, 1): ("not applicable", SLOW.format("6.1"), "native"),  # P40 / GTX 1080: DP4A, slow FP16
    (7, 0): ("not applicable", "native", "native"),  # V100
    (7, 5): ("not applicable", "native", "native"),  # T4
    (8, 0): ("native", "native", "native"),  # A100
    (9, 0): ("native", "native", "native"),
}


@pytest.mark.parametrize("capability", sorted(PRECISION_TABLE))
def test_precision_support_by_sm(capability):
    tf32, fp16, int8 = PRECISION_TABLE[capability]
    assert compat.precision_support(capability) == {"fp32": "native", "tf32": tf32, "fp16": fp16, "int8": int8,
                                                    "int8-qdq": int8}
    for variant, state in (("tf32", tf32), ("fp16", fp16), ("int8", int8), ("int8-qdq", int8)):
        assert bool(compat.precision_reason(variant, capability)) == (state != "native")


class _Builder:
    """A TensorRT builder's platform answers; reading them warns as TensorRT 10's deprecated properties do."""

    def __init__(self, tf32, fp16, int8):
        self._answers = {"tf32": tf32, "fp16": fp16, "int8": int8}

    def _answer(self, key):
        warnings.warn(f"platform_has_{key} is deprecated", DeprecationWarning)
        return self._answers[key]

    platform_has_tf32 = property(lambda self: self._answer("tf32"))
    platform_has_fast_fp16 = property(lambda self: self._answer("fp16"))
    platform_has_fast_int8 = property(lambda self: self._answer("int8"))


def test_builder_answers_win_over_the_table_without_leaking_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        support = compat.precision_support((8, 0), _Builder(tf32=False, fp16=True, int8=False))
    assert support["tf32"] == "not applicable" and support["fp16"] == "native"
    assert support["int8"] == support["int8-qdq"] == "runs FP32 kernels on SM 8.0"
    # a builder without the properties (TensorRT 11 removed them): the table decides
    assert compat.precision_support((5, 2), object()) == compat.precision_support((5, 2))


def test_network_flags_set_explicit_batch_where_the_enum_has_it():
    class Flags(enum.IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    class Trt8:
        NetworkDefinitionCreationFlag = Flags

    class Trt11:
        NetworkDefinitionCreationFlag = enum.IntEnum("Flags", {"STRONGLY_TYPED": 1})

    assert compat.network_flags(Trt8) == 1
    assert compat.network_flags(Trt11) == 0


class _Context:
    def __init__(self, result):
        self.result, self.calls = result, []

    def set_input_shape(self, name, shape):
        self.calls.append((name, shape))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_checked_turns_false_and_exceptions_into_errors_naming_the_call():
    assert compat.checked(_Context(True).set_input_shape, "img0", (4, 3, 32, 32)) is True
    with pytest.raises(RuntimeError, match=r"set_input_shape\('img0', \(0, 3, 32, 32\)\) returned False"):
        compat.checked(_Context(False).set_input_shape, "img0", (0, 3, 32, 32))
    with pytest.raises(RuntimeError, match=r"set_input_shape\('img1', \(2, 3\)\) failed: bad shape"):
        compat.checked(_Context(ValueError("bad shape")).set_input_shape, "img1", (2, 3))
    with pytest.raises(RuntimeError, match=r"set_timing_cache\(_Context, False\)"):
        compat.checked(_Context(False).set_input_shape, _Context(True), False, what="set_timing_cache")


class _Config:
    """A builder config: the calibrator attribute warns as in TensorRT 10.1+, set_* return what they are told."""

    def __init__(self, profile_ok=True, accepts=(b"",)):
        self.profile_ok, self.accepts = profile_ok, accepts
        self.calibrator = self.profile = self.cache = None
        self.created = []

    @property
    def int8_calibrator(self):
        return self.calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, value):
        warnings.warn("int8_calibrator is deprecated", DeprecationWarning)
        self.calibrator = value

    def set_calibration_profile(self, profile):
        warnings.warn("set_calibration_profile is deprecated", DeprecationWarning)
        self.profile = profile
        return self.profile_ok

    def create_timing_cache(self, blob):
        if blob == b"damaged":
            raise RuntimeError("cannot deserialize")
        self.created.append(blob)
        return ("cache", blob)

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False  # a mismatch must be seen, never silently accepted
        if cache[1] in self.accepts:
            self.cache = cache
            return True
        return False


def test_calibrator_is_set_with_its_profile_and_no_warning_leaks():
    config = _Config()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.set_int8_calibrator(config, "calibrator", "profile")
    assert config.calibrator == "calibrator" and config.profile == "profile"
    with pytest.raises(RuntimeError, match="set_calibration_profile"):
        compat.set_int8_calibrator(_Config(profile_ok=False), "calibrator", "profile")


def test_timing_cache_name_is_keyed_by_version_gpu_and_sm():
    name = compat.timing_cache_name("8.5.3.1", "Tesla M40 24GB", (5, 2))
    assert name == "tensorrt-8.5.3.1-tesla-m40-24gb-sm52.timing-cache"
    others = {compat.timing_cache_name("10.3.0", "Tesla M40 24GB", (5, 2)),
              compat.timing_cache_name("8.5.3.1", "Tesla P40", (6, 1)),
              compat.timing_cache_name("8.5.3.1", "Tesla M40 24GB", "5.3")}
    assert name not in others and len(others) == 3
    assert "/" not in compat.timing_cache_name("10.3.0", "NVIDIA H100 80GB HBM3 / PCIe", (9, 0))


def test_timing_cache_mismatch_starts_a_fresh_one_and_says_so():
    said = []
    config = _Config(accepts=(b"", b"mine"))
    assert compat.attach_timing_cache(config, b"mine", said.append) == ("cache", b"mine") and said == []
    for blob in (b"from another gpu", b"damaged"):
        config = _Config(accepts=(b"",))
        assert compat.attach_timing_cache(config, blob, said.append) == ("cache", b"")
        assert config.cache == ("cache", b"") and "starting a fresh one" in said[-1]
    assert len(said) == 2
    config = _Config(accepts=(b"",))
    assert compat.attach_timing_cache(config, b"", said.append) == ("cache", b"") and len(said) == 2  # none yet: quiet
    with pytest.raises(RuntimeError, match="set_timing_cache"):
        compat.attach_timing_cache(_Config(accepts=()), b"", said.append)


def test_opset_problem_for_8x_parsers():
    problem = compat.opset_problem("8.5.3.1", 18, "model.onnx")
    assert "model.onnx" in problem and "opset 18" in problem and "--opset 17" in problem
    assert compat.opset_problem("8.6.1", 17) is None
    assert compat.opset_problem("10.3.0", 18) is None


def _readme_generation_rows() -> list[list[str]]:
    """The README's GPU generations table, one list of cells per row (header and rule left out)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text[text.index("#### GPU generations"):text.index("#### What kinship does with it")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ")]
    return [row for row in rows if row[0] != "Generation"]


def test_the_readme_gpu_table_matches_the_table_in_code():
    """Each README row names the release the code asks for on its first SM, and every generation has a row."""
    rows = _readme_generation_rows()
    named = set()
    for generation_cell, sm_cell, _examples, release_cell, *precisions in rows:
        first_sm = compat.parse_capability(sm_cell.replace(",", " ").replace("-", " ").split()[0])
        gen = compat.generation(first_sm)
        named.add(gen.name)
        assert gen.release_text in release_cell.replace("**", ""), (sm_cell, gen.release_text, release_cell)
        if gen.last_release is None or gen.last_release >= (8, 5):  # one this code drives: its precisions
            support = compat.precision_support(first_sm)
            shown = ["native" if cell.startswith("native") else cell for cell in precisions]
            expected = [{"runs FP32 kernels on " + compat.sm_text(first_sm): "FP32 kernels"}.get(support[v], support[v])
                        for v in ("fp32", "tf32", "fp16", "int8")]
            assert shown == expected, (sm_cell, shown, expected)
    assert named == {gen.name for gen in compat.GENERATIONS}
