"""TensorRT backend: the CPU-side planning and the runtime's logic (with stand-ins for TensorRT and pycuda) always;
real builds only on an NVIDIA GPU with TensorRT 8.5, 8.6 or 10.x."""

from __future__ import annotations

import gc
import inspect
import json
import weakref

import numpy as np
import pytest

from kinship.cli import main
from kinship.data import SplitConfig
from kinship.engines.calibration import CalibrationConfig, build_calibration_set, save_calibration
from kinship.engines.config import EngineConfig
from kinship.engines.registry import build_engine, decide_backend, load_engine, resolve_backend
from kinship.engines.tensorrt_backend import (
    REQUIREMENT, HostFacts, PartRunner, TensorIO, ThreadContexts, add_calibration, chunks, engine_io, layer_census,
    match_inputs, onnx_input_shapes, onnx_opset, only_output, pad_rows, plan_parts, profile_shapes,
    tensorrt_unavailable_reason, timing_cache_file, unavailable_reason,
)
from kinship.engines.validate import compare_logits, reference_engine
from kinship.errors import UserError

SIZE = 32
M40 = HostFacts("8.5.3.1", devices=1, gpu_name="Tesla M40", capability=(5, 2))
UNAVAILABLE = tensorrt_unavailable_reason()
needs_gpu = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"{REQUIREMENT}: {UNAVAILABLE}")


@pytest.fixture(scope="module")
def calibration(tiny_data):
    return build_calibration_set(tiny_data, SIZE, SplitConfig(), CalibrationConfig(batches=3, batch_size=16))


def _sources(tiny_onnx):
    from kinship.engines.onnx_parts import source_parts

    return source_parts(tiny_onnx, companions=True)


def test_profile_covers_every_input_with_one_batch_range(tiny_onnx):
    shapes = profile_shapes(onnx_input_shapes(tiny_onnx), 1, 64, 1024)
    assert shapes == {name: ((1, 3, SIZE, SIZE), (64, 3, SIZE, SIZE), (1024, 3, SIZE, SIZE)) for name in ("img0", "img1")}
    head = profile_shapes(onnx_input_shapes(tiny_onnx.with_name("model.head.onnx")), 2, 8, 16)
    dim = head["emb0"][0][1]
    assert head == {"emb0": ((2, dim), (8, dim), (16, dim)), "emb1": ((2, dim), (8, dim), (16, dim))}


def test_profile_refuses_bad_ranges_and_dynamic_images():
    with pytest.raises(UserError, match="min <= opt <= max"):
        profile_shapes({"x": (-1, 3, 8, 8)}, 4, 2, 8)
    with pytest.raises(UserError, match="dynamic non-batch"):
        profile_shapes({"x": (-1, 3, -1, -1)}, 1, 2, 4)
    with pytest.raises(UserError):
        EngineConfig(min_batch=0)


def test_chunks_cover_a_batch_within_the_profile():
    parts = chunks(2500, 1024)
    assert [(p.start, p.stop) for p in parts] == [(0, 1024), (1024, 2048), (2048, 2500)]
    assert chunks(0, 8) == [] and chunks(3, 8) == [slice(0, 3)]


def test_calibrator_batches_follow_the_opt_shape(tiny_onnx, calibration, tmp_path):
    from kinship.engines.onnx_parts import embedder

    sources = _sources(tiny_onnx)
    options = EngineConfig(min_batch=1, opt_batch=16, max_batch=64)
    plans = plan_parts(sources, options)
    add_calibration(plans, calibration, tmp_path, embedder(sources), options, M40)
    for part, plan in plans.items():
        for batch in plan.calibration_batches:
            for name, array in batch.items():
                assert array.shape == plan.shapes[name][1], (part, name)  # exactly the profile's opt shape
                assert array.dtype == np.float32 and array.flags["C_CONTIGUOUS"]
    assert len(plans["pair"].calibration_batches) == 48 // 16
    assert len(plans["encoder"].calibration_batches) == 96 // 16  # both sides of every pair
    embeddings = plans["head"].calibration_batches[0]["emb0"]
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)  # real FP32 encoder outputs
    paths = {plan.calibration_table.path for plan in plans.values()}
    assert len(paths) == 3 and all(p.parent == tmp_path for p in paths)
    assert all("tensorrt-8.5.3.1-tesla-m40-sm52" in p.name for p in paths)  # keyed by TensorRT and GPU
    again = plan_parts(sources, options)
    add_calibration(again, calibration, tmp_path, embedder(sources), options, M40)
    assert {p.calibration_table.path for p in again.values()} == paths  # a rebuild reuses the same tables
    other = plan_parts(sources, options)
    add_calibration(other, calibration, tmp_path, embedder(sources), options,
                    HostFacts("10.3.0", devices=1, gpu_name="Tesla M40", capability=(5, 2)))
    assert not {p.calibration_table.path for p in other.values()} & paths  # another release: other tables


def test_layer_census_reads_the_inspector_json():
    info = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Outputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Weights": {"Type": "Int8", "Count": 864}, "Bias": {"Type": "Float", "Count": 32}},
        {"Name": "reformat", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "gemm", "LayerType": "CaskGemm", "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}],
         "Weights": {"Type": "Half", "Count": 100}},
        {"Name": "norm", "LayerType": "Reduce", "Outputs": [{"Format/Datatype": "Float"}]},
    ]}
    census = layer_census(json.dumps(info))
    assert census["layers"] == census["detailed_layers"] == 4
    assert census["layers_by_precision"] == {"fp16": 1, "fp32": 2, "int8": 1}
    assert census["reformat_layers"] == 1
    assert census["weight_elements_by_type"] == {"fp16": 100, "fp32": 32, "int8": 864}
    names_only = layer_census(json.dumps({"Layers": ["conv1 + relu", "gemm"]}))
    assert names_only["layers_by_precision"] == {"unknown": 2} and names_only["detailed_layers"] == 0


def test_layer_census_classifies_by_input_format():
    """A convolution reading INT8 and writing float is an INT8 layer (as NVIDIA's engine explorer counts it)."""
    info = {"Layers": [
        {"Name": "conv", "LayerType": "CaskConvolution",
         "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "to-int8", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Format/Datatype": "Channel major Int8 format"}]},
        {"Name": "constant", "LayerType": "Constant", "Inputs": [], "Outputs": [{"Format/Datatype": "Half"}]},
    ]}
    census = layer_census(json.dumps(info))
    assert census["layers_by_precision"] == {"fp16": 1, "fp32": 1, "int8": 1}


# ----------------------------------------------------------------------------- the runtime, with stand-ins


class _Memory(dict):
    """Device memory of the stand-in driver: address -> array."""


class _Owned:
    """Something pycuda frees only where its CUDA context is current: ``free()`` outside the pushed context fails
    the test, and one dropped there unfreed is recorded as a leak (pycuda warns "could not be cleaned up" and
    leaks it)."""

    def __init__(self, driver, what):
        self.driver, self.what, self.freed = driver, what, False
        driver.live.add(id(self))

    def free(self):
        assert self.driver.pushed > 0, f"{self.what} freed outside the pushed CUDA context"
        self._release()

    def _release(self):
        if not self.freed:
            self.freed = True
            self.driver.live.discard(id(self))

    def __del__(self):
        if self.freed:
            return
        if self.driver.pushed > 0:  # pycuda frees it here: its context is current
            self._release()
        else:
            self.driver.leaks.append(self.what)


class _DeviceAllocation(_Owned):
    def __init__(self, driver, address):
        super().__init__(driver, f"device allocation {address}")
        self.address = address

    def __int__(self):
        return self.address


class _HostAllocation(_Owned):
    """Pinned host memory: the numpy array of ``pagelocked_empty`` has it as its base, as in pycuda."""

    def __init__(self, driver, size, dtype):
        super().__init__(driver, f"pinned {size} x {np.dtype(dtype).name}")
        self._array = np.zeros(size, dtype)
        self.__array_interface__ = self._array.__array_interface__


class _Event(_Owned):
    PHASES = {("start", "copied_in"): 1.0, ("copied_in", "computed"): 2.0, ("computed", "copied_out"): 3.0}

    def __init__(self, driver, name):
        super().__init__(driver, f"event {name}")
        self.log, self.name, self.pinned = driver.log, name, driver.pinned

    def record(self, stream):
        # what the pinned host buffers held when this event was recorded
        self.log.append(("record", self.name, [ref().copy() for ref in self.pinned if ref() is not None]))

    def time_till(self, other):
        return self.PHASES[(self.name, other.name)]  # any other pairing is a KeyError: the test fails


class _Stream(_Owned):
    handle = 7

    def __init__(self, driver):
        super().__init__(driver, "stream")
        self.log = driver.log

    def synchronize(self):
        self.log.append(("synchronize",))


class _Driver:
    """The parts of pycuda.driver a runner uses, recording every call in order; ``pushed`` counts the pushes of
    the CUDA context (the stand-in contexts of ``_contexts``), ``live`` what is not freed yet, ``leaks`` what was
    dropped outside the context."""

    def __init__(self):
        self.log, self.memory, self.pinned = [], _Memory(), []
        self.pushed, self.live, self.leaks = 0, set(), []
        self._events = iter(("start", "copied_in", "computed", "copied_out"))

    def Stream(self):
        return _Stream(self)

    def Event(self):
        return _Event(self, next(self._events))

    def mem_alloc(self, nbytes):
        address = 4096 * (len(self.memory) + 1)
        self.memory[address] = None
        self.log.append(("mem_alloc", nbytes))
        return _DeviceAllocation(self, address)

    def pagelocked_empty(self, size, dtype):
        self.log.append(("pagelocked_empty", size, np.dtype(dtype).name))
        array = np.asarray(_HostAllocation(self, size, dtype))
        self.pinned.append(weakref.ref(array))  # weak: the runner alone decides when it is freed
        return array

    def memcpy_htod(self, device, host):
        self.memory[int(device)] = host.copy()

    def memcpy_htod_async(self, device, host, stream):
        self.log.append(("htod",))
        self.memory[int(device)] = host.copy()

    def memcpy_dtoh_async(self, host, device, stream):
        self.log.append(("dtoh",))
        host[...] = self.memory[int(device)].reshape(host.shape)


def _contexts(driver):
    """The runner's per-thread contexts, with a primary context whose push and pop the driver counts."""

    class Primary:
        def push(self):
            driver.pushed += 1

        def pop(self):
            driver.pushed -= 1

    primary = Primary()
    return ThreadContexts(lambda: primary)


class _ExecutionContext:
    """Computes logit = sum(img0) - 2 * sum(img1) per row (asymmetric, so swapped inputs show) and an embedding."""

    def __init__(self, engine, driver, results=None):
        self.engine, self.driver, self.shapes, self.addresses = engine, driver, {}, {}
        self.results = results or {}

    def set_input_shape(self, name, shape):
        self.driver.log.append(("set_input_shape", name, shape))
        return self.results.get("set_input_shape", True)

    def set_tensor_address(self, name, address):
        self.driver.log.append(("set_tensor_address", name))
        self.addresses[name] = address
        return self.results.get("set_tensor_address", True)

    def get_tensor_shape(self, name):
        batch = self.shapes_batch()
        rest = self.engine.tensors[name][2][1:]
        return (-1 if batch is None or self.results.get("unresolved") else batch, *rest)

    def shapes_batch(self):
        shapes = [entry[2] for entry in self.driver.log if entry[0] == "set_input_shape"]
        return shapes[-1][0] if shapes else None

    def execute_async_v3(self, stream_handle):
        self.driver.log.append(("execute",))
        memory, batch = self.driver.memory, self.shapes_batch()
        first = memory[self.addresses["img0"]].reshape(batch, -1).sum(axis=1)
        second = memory[self.addresses["img1"]].reshape(batch, -1).sum(axis=1)
        for name, (mode, dtype, shape) in self.engine.tensors.items():
            if mode == "out":
                values = (first - 2 * second) if name == "logit" else np.stack([first, second], axis=1)
                memory[self.addresses[name]] = values.reshape(batch, *shape[1:]).astype(dtype)
        return self.results.get("execute", True)


class _Engine:
    def __init__(self, tensors, profile, driver, results=None):
        self.tensors, self.profile, self.driver, self.results = tensors, profile, driver, results

    num_io_tensors = property(lambda self: len(self.tensors))

    def get_tensor_name(self, index):
        return list(self.tensors)[index]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_profile_shape(self, name, profile):
        return [(batch, *self.tensors[name][2][1:]) for batch in self.profile]

    def create_execution_context(self):
        return _ExecutionContext(self, self.driver, self.results)


class _Trt:
    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    @staticmethod
    def nptype(dtype):
        return {"float32": np.float32, "float16": np.float16}[dtype]


PAIR = {"img0": ("in", "float32", (-1, 3, 2, 2)), "img1": ("in", "float32", (-1, 3, 2, 2)),
        "logit": ("out", "float32", (-1,))}


def _runner(tensors=PAIR, profile=(1, 4, 8), results=None):
    driver = _Driver()
    engine = _Engine(tensors, profile, driver, results)
    return PartRunner(engine, engine_io(engine, _Trt), driver, scope=_contexts(driver).active), driver


def _pairs(rows, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 3, 2, 2)).astype(np.float32), rng.normal(size=(rows, 3, 2, 2)).astype(np.float32)


def _expected(img0, img1):
    return img0.reshape(len(img0), -1).sum(axis=1) - 2 * img1.reshape(len(img1), -1).sum(axis=1)


def test_a_timed_call_runs_in_trtexecs_order():
    runner, driver = _runner()
    img0, img1 = _pairs(5)
    outputs, times = runner.run({"img0": img0, "img1": img1})
    assert np.allclose(outputs["logit"], _expected(img0, img1), atol=1e-5)
    assert (times.h2d_ms, times.compute_ms, times.d2h_ms) == (1.0, 2.0, 3.0)  # each phase from its own pair of events
    assert times.enqueue_ms >= 0
    kinds = [entry[0] if entry[0] != "record" else f"record {entry[1]}" for entry in driver.log]
    start = kinds.index("record start")
    # every piece of host-side work comes before the first event: shapes, buffers, pinned copies, output addresses
    assert set(kinds[:start]) == {"set_input_shape", "mem_alloc", "pagelocked_empty", "set_tensor_address"}
    assert kinds[:start].count("set_tensor_address") == 3  # both inputs and the output
    pinned_at_start = driver.log[start][2]
    assert np.array_equal(pinned_at_start[0].reshape(img0.shape), img0)  # the pinned copy was already made
    assert np.array_equal(pinned_at_start[1].reshape(img1.shape), img1)
    assert kinds[start:] == ["record start", "htod", "htod", "record copied_in", "execute", "record computed", "dtoh",
                             "record copied_out", "synchronize"]  # compute brackets the enqueued execution only
    driver.log.clear()
    runner.run({"img0": img0, "img1": img1})
    assert "mem_alloc" not in [entry[0] for entry in driver.log]  # buffers are reused by later calls


def test_inputs_are_matched_by_name_not_position():
    img0, img1 = _pairs(3)
    reversed_declaration = dict(reversed(list(PAIR.items())))  # the engine lists img1 first
    for tensors in (PAIR, reversed_declaration):
        runner, _ = _runner(tensors)
        outputs, _ = runner.run({"img1": img1, "img0": img0})
        assert np.allclose(outputs["logit"], _expected(img0, img1), atol=1e-5)
    with pytest.raises(UserError, match=r"missing \['img1'\].*unknown \['image'\]"):
        runner.run({"img0": img0, "image": img1})
    with pytest.raises(UserError, match="same number of rows"):
        match_inputs({"img0": img0, "img1": img1[:2]}, {"img0": np.dtype("float32"), "img1": np.dtype("float32")})
    cast = match_inputs({"x": np.arange(4, dtype=np.float64)}, {"x": np.dtype("float16")})["x"]
    assert cast.dtype == np.float16 and cast.flags["C_CONTIGUOUS"]


def test_outputs_and_their_dtypes_come_from_the_engine():
    tensors = {**PAIR, "logit": ("out", "float16", (-1,)), "sides": ("out", "float32", (-1, 2))}
    runner, driver = _runner(tensors)
    assert runner.io.outputs == {"logit": np.dtype("float16"), "sides": np.dtype("float32")}
    img0, img1 = _pairs(4)
    outputs, _ = runner.run({"img0": img0, "img1": img1})
    assert set(outputs) == {"logit", "sides"} and outputs["logit"].dtype == np.float16 and outputs["sides"].shape == (4, 2)
    assert ("pagelocked_empty", 4, "float16") in driver.log
    assert np.allclose(only_output(outputs, "logit"), _expected(img0, img1), atol=0.05)
    assert only_output({"out0": outputs["sides"]}, "logit") is outputs["sides"]  # one output under another name
    with pytest.raises(UserError, match="none called 'embedding'"):
        only_output(outputs, "embedding")


def test_small_last_chunk_is_padded_to_the_profile_minimum_and_trimmed():
    runner, driver = _runner(profile=(4, 4, 8))
    img0, img1 = _pairs(10, seed=1)
    outputs, times = runner.run_all({"img0": img0, "img1": img1})
    assert np.allclose(outputs["logit"], _expected(img0, img1), atol=1e-5) and outputs["logit"].shape == (10,)
    shapes = [entry[2][0] for entry in driver.log if entry[0] == "set_input_shape"]
    assert shapes == [8, 8, 4, 4]  # 8 rows, then the last 2 padded up to the minimum of 4
    assert times.compute_ms == 4.0  # two calls' phases summed
    outputs, _ = runner.run_all({"img0": img0[:1], "img1": img1[:1]})
    assert outputs["logit"].shape == (1,)
    padded = pad_rows(img0[:2], 4)
    assert padded.shape[0] == 4 and np.array_equal(padded[2], img0[1]) and pad_rows(img0, 4) is img0
    with pytest.raises(UserError, match="no rows"):
        runner.run_all({"img0": img0[:0], "img1": img1[:0]})


def test_the_fakes_fail_a_free_outside_the_pushed_context():
    driver = _Driver()
    with pytest.raises(AssertionError, match="outside the pushed CUDA context"):
        driver.mem_alloc(16).free()
    driver.Stream()  # dropped unfreed outside the context: what pycuda leaks (as the allocation above was)
    assert driver.leaks == ["device allocation 4096", "stream"]


def test_the_runner_frees_its_buffers_stream_and_events_inside_the_context():
    runner, driver = _runner()
    img0, img1 = _pairs(6)
    runner.run({"img0": img0[:2], "img1": img1[:2]})
    runner.run({"img0": img0, "img1": img1})  # larger: the first buffers are freed (in the context) and replaced
    assert driver.leaks == [] and driver.pushed == 0
    runner.close()
    assert driver.live == set() and driver.leaks == [] and driver.pushed == 0
    runner.close()  # closing twice is harmless
    dropped, driver = _runner()
    dropped.run({"img0": img0, "img1": img1})
    del dropped  # never closed: the garbage collector's thread frees it, pushing the context there
    gc.collect()
    assert driver.live == set() and driver.leaks == []


def test_the_int8_calibrator_frees_its_buffers_inside_the_context_and_refuses_other_tables(tmp_path, caplog):
    from kinship.engines.calibration import CalibrationTable
    from kinship.engines.tensorrt_backend import entropy_calibrator

    driver = _Driver()
    contexts = _contexts(driver)
    img0, img1 = _pairs(4)
    batches = [{"img0": img0[:2], "img1": img1[:2]}, {"img0": img0[2:], "img1": img1[2:]}]
    table = CalibrationTable(tmp_path / "calibration.cache", "tensorrt-8.5.3.1-tesla-m40-sm52")
    with contexts.active(), entropy_calibrator(_Trt, driver, batches, table) as calibrator:
        assert calibrator.read_calibration_cache() is None  # none yet: TensorRT calibrates
        first = calibrator.get_batch(["img1", "img0"])
        assert np.array_equal(driver.memory[first[1]], img0[:2]) and np.array_equal(driver.memory[first[0]], img1[:2])
        assert calibrator.get_batch(["img0", "img1"]) and calibrator.get_batch(["img0", "img1"]) is None
        calibrator.write_calibration_cache(b"TRT-8503-EntropyCalibration2\nimg0: 3c010a14\n")
        assert calibrator.read_calibration_cache() == b"TRT-8503-EntropyCalibration2\nimg0: 3c010a14\n"
    assert driver.live == set() and driver.leaks == [] and driver.pushed == 0  # freed on leaving, in the context
    other = CalibrationTable(table.path, "tensorrt-10.3.0-tesla-m40-sm52")
    with contexts.active(), entropy_calibrator(_Trt, driver, batches, other) as calibrator, caplog.at_level("WARNING"):
        assert calibrator.read_calibration_cache() is None  # another release's table: calibrated afresh
    refused = [r.getMessage() for r in caplog.records if "calibration table" in r.getMessage()]
    assert len(refused) == 1 and "\n" not in refused[0] and "tensorrt-10.3.0" in refused[0]
    assert driver.live == set() and driver.leaks == []


@pytest.mark.parametrize("failing, message", [
    ("set_input_shape", r"set_input_shape\('img0', \(3, 3, 2, 2\)\) returned False"),
    ("set_tensor_address", r"set_tensor_address\('img0', 4096\) returned False"),
    ("execute", "execute_async_v3 returned False"),
    ("unresolved", r"output 'logit' with shape \(-1,\)"),
])
def test_tensorrt_refusals_are_errors(failing, message):
    runner, driver = _runner(results={failing: False} if failing != "unresolved" else {"unresolved": True})
    with pytest.raises(RuntimeError, match=message):
        runner.run(dict(zip(("img0", "img1"), _pairs(3))))


def test_cuda_context_is_pushed_on_each_calling_thread():
    import threading

    calls = []

    class Primary:
        def push(self):
            calls.append(("push", threading.get_ident()))

        def pop(self):
            calls.append(("pop", threading.get_ident()))

    contexts = ThreadContexts(Primary)
    main, worker = threading.get_ident(), []

    def on_worker():
        worker.append(threading.get_ident())
        with contexts.active():
            pass

    with contexts.active():
        with contexts.active():  # nested on one thread: pushed once
            pass
        thread = threading.Thread(target=on_worker)  # while this thread holds it, the worker still pushes its own
        thread.start()
        thread.join()
    assert calls == [("push", main), ("push", worker[0]), ("pop", worker[0]), ("pop", main)]


@pytest.mark.parametrize("facts, expected", [
    (HostFacts(import_error="ModuleNotFoundError: No module named 'tensorrt'"), "cannot import tensorrt"),
    (HostFacts(version="9.3.0.post12.dev1"), "this code drives 8.5, 8.6 or 10.x"),
    (HostFacts(version="10.3.0", cuda_error="LogicError: cuInit failed"), "CUDA unusable through pycuda"),
    (HostFacts(version="10.3.0"), "no CUDA device found"),
    (HostFacts(version="10.3.0", devices=1, gpu_name="Tesla M40", capability=(5, 2)),
     "Tesla M40 (SM 5.2, Maxwell) needs TensorRT 8.5.3; TensorRT 10.3.0 is installed"),
    (HostFacts(version="8.5.3.1", devices=1, gpu_name="Tesla M40", capability=(5, 2)), None),
    (HostFacts(version="10.3.0", devices=1, gpu_name="NVIDIA A100", capability=(8, 0)), None),
])
def test_unavailable_reason(facts, expected):
    reason = unavailable_reason(facts)
    assert reason is None if expected is None else expected in reason


# (compute capability, installed TensorRT, what --backend auto picks)
AUTO_TABLE = [
    ((5, 2), "10.3.0", "onnxruntime"), ((5, 2), "8.6.1", "onnxruntime"), ((5, 2), "8.5.3.1", "tensorrt"),
    ((6, 1), "10.0.1", "onnxruntime"), ((6, 1), "8.6.1", "tensorrt"), ((7, 0), "10.4.0", "tensorrt"),
    ((7, 0), "10.5.0", "onnxruntime"), ((7, 5), "10.3.0", "tensorrt"), ((8, 0), "8.5.3.1", "tensorrt"),
    ((8, 6), "10.16.1.11", "tensorrt"), ((9, 0), "11.0.0.114", "onnxruntime"),
]


@pytest.mark.parametrize("capability, version, expected", AUTO_TABLE)
def test_auto_backend_follows_the_compute_capability(capability, version, expected):
    reason = unavailable_reason(HostFacts(version, devices=1, gpu_name="GPU X", capability=capability))
    backend, note = decide_backend("auto", reason)
    assert backend == expected
    assert decide_backend("onnxruntime", reason) == ("onnxruntime", "onnxruntime (chosen with --backend)")
    if expected == "tensorrt":
        assert decide_backend("tensorrt", reason) == ("tensorrt", "tensorrt (chosen with --backend)")
        return
    assert note.startswith("onnxruntime (auto: ") and version in note
    with pytest.raises(UserError) as refused:
        decide_backend("tensorrt", reason)
    message = str(refused.value)
    assert "\n" not in message and message.endswith(reason) and version in message
    if version != "11.0.0.114":  # a supported release that does not support this GPU: named with the one that does
        sm = f"SM {capability[0]}.{capability[1]}"
        assert "GPU X" in message and sm in message and "needs TensorRT" in message and "GPU X" in note


def test_timing_cache_file_names_version_and_gpu(tmp_path):
    m40 = HostFacts(version="8.5.3.1", devices=1, gpu_name="Tesla M40", capability=(5, 2))
    a100 = HostFacts(version="10.3.0", devices=1, gpu_name="NVIDIA A100-SXM4-40GB", capability=(8, 0))
    assert timing_cache_file(tmp_path, m40) == tmp_path / "tensorrt-8.5.3.1-tesla-m40-sm52.timing-cache"
    assert timing_cache_file(tmp_path, a100).name == "tensorrt-10.3.0-nvidia-a100-sxm4-40gb-sm80.timing-cache"


def test_export_opset_is_read_for_the_parser_check(tiny_onnx):
    from kinship.engines.tensorrt_compat import opset_problem

    assert onnx_opset(tiny_onnx) == 18
    assert "--opset 17" in opset_problem("8.5.3.1", onnx_opset(tiny_onnx), tiny_onnx.name)


def test_export_at_opset_17_for_tensorrt_8(tiny_run, tmp_path, capsys):
    """TensorRT 8.5/8.6 parse up to opset 17: the export converts, and is checked against PyTorch as always."""
    import onnx

    from kinship.engines.tensorrt_compat import opset_problem
    from kinship.export import companion_paths, export_checkpoint

    out = tmp_path / "m17.onnx"
    code = main(["export", str(tiny_run / "model.pt"), "--out", str(out), "--opset", "17", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["opset"] == 17 and len(payload["checks"]) == 3
    for path in companion_paths(out).all():
        assert onnx_opset(path) == 17 and opset_problem("8.5.3.1", onnx_opset(path)) is None
        model = onnx.load(str(path))
        reduces = [node for node in model.graph.node if node.op_type in ("ReduceMean", "ReduceL2")]
        assert all({a.name for a in node.attribute} >= {"axes"} for node in reduces)  # opset-17 form: axes attribute
    assert any(node.op_type == "ReduceL2" for node in onnx.load(str(out)).graph.node)  # the converted case is present
    with pytest.raises(UserError, match="opset 16"):
        export_checkpoint(tiny_run / "model.pt", tmp_path / "m16.onnx", None, None, opset=16)


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT is usable here: the refusal cannot be observed")
def test_choosing_tensorrt_without_it_is_a_clear_user_error(tiny_onnx, tiny_data, tmp_path, capsys):
    with pytest.raises(UserError, match=r"needs TensorRT 8\.5, 8\.6 or 10\.x, pycuda and an NVIDIA GPU that release supports: "):
        build_engine(tiny_onnx, tmp_path, "fp32", "tensorrt", None)
    assert resolve_backend("auto") == "onnxruntime"
    code = main(["engines", "--onnx", str(tiny_onnx), "--data", str(tiny_data), "--out", str(tmp_path / "out"),
                 "--backend", "tensorrt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and REQUIREMENT in err
    fake = tmp_path / "model.engine"
    fake.write_bytes(b"plan")
    with pytest.raises(UserError, match=r"model\.engine: TensorRT backend needs"):
        load_engine(fake)


# ----------------------------------------------------------------------------- on a GPU only


@pytest.fixture(scope="module")
def calibration_file(calibration, tmp_path_factory):
    return save_calibration(calibration, tmp_path_factory.mktemp("trt-calibration") / "calib.npz")


@pytest.fixture(scope="module")
def onnx17(tiny_run, tiny_data, tmp_path_factory):
    """``tiny_run`` exported at opset 17, which the TensorRT 8.5/8.6 parsers read and 10.x reads too: the GPU tests
    build from it (the default opset-18 export is refused by 8.x before building)."""
    from kinship.checkpoint import read_checkpoint
    from kinship.export import export_checkpoint, validation_sample

    checkpoint = tiny_run / "model.pt"
    img0, img1 = validation_sample(tiny_data, read_checkpoint(checkpoint)["metadata"], SIZE, count=32)
    files, _ = export_checkpoint(checkpoint, tmp_path_factory.mktemp("onnx17") / "model.onnx", img0, img1, opset=17)
    return files.pair


def test_tensorrt_8_refuses_the_opset_18_export_and_the_gpu_tests_build_from_opset_17(
        tiny_onnx, onnx17, tmp_path, monkeypatch):
    """Through stand-ins for an M40 with TensorRT 8.5.3: the opset-18 file is one line naming the export to run,
    before anything is built; the GPU tests' file passes the same check."""
    from kinship.engines import tensorrt_backend as backend
    from kinship.engines import tensorrt_compat

    monkeypatch.setattr(backend, "host_facts", lambda: M40)
    monkeypatch.setattr(backend, "device_support", lambda facts: tensorrt_compat.precision_support(facts.capability))
    built = []
    monkeypatch.setattr(backend, "build_part", lambda *args, **kwargs: built.append(args) or {})
    with pytest.raises(UserError, match=r"model\.onnx uses ONNX opset 18, TensorRT 8\.5\.3\.1's parser reads up to 17: "
                                        r"export it with `kinship export --opset 17`") as refused:
        backend.build_trt_engine(tiny_onnx, tmp_path / "out18", "fp32", None, EngineConfig())
    assert "\n" not in str(refused.value) and built == []
    backend._check_opset(_sources(onnx17), M40)  # no refusal: every part is opset 17
    assert {onnx_opset(path) for path in _sources(onnx17).values()} == {17}
    for gpu_test in (test_tensorrt_engines_track_fp32, test_int8_rebuild_reuses_the_calibration_cache):
        taken = inspect.signature(gpu_test).parameters  # they built from tiny_onnx (opset 18): all failed on 8.5.3
        assert "onnx17" in taken and "tiny_onnx" not in taken, gpu_test.__name__


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant, max_diff", [("fp32", 1e-3), ("tf32", 2e-2), ("fp16", 5e-2), ("int8", 0.5), ("int8-qdq", 0.5)])
def test_tensorrt_engines_track_fp32(onnx17, calibration, calibration_file, tmp_path, variant, max_diff):
    options = EngineConfig(min_batch=1, opt_batch=16, max_batch=64)
    from kinship.engines import tensorrt_compat
    from kinship.engines.base import read_sidecar
    from kinship.engines.tensorrt_backend import host_facts

    built = build_engine(onnx17, tmp_path, variant, "tensorrt", calibration_file, options)
    capability = host_facts().capability
    if variant == "tf32" and capability < (8, 0):  # before Ampere a TF32 build would be the FP32 engine
        assert built.status == "not applicable" and "SM 8.0" in built.notes[0]
        return
    assert built.path.suffix == ".engine" and set(built.parts) == {"pair", "encoder", "head"}
    sidecar = read_sidecar(built.path)
    assert sidecar["hardware"] == tensorrt_compat.precision_support(capability)[variant]
    assert bool(sidecar["hardware_evidence"]) == (sidecar["hardware"] != "native")
    assert len(list(tmp_path.glob("tensorrt-*-sm*.timing-cache"))) == 1  # keyed by TensorRT version and GPU
    assert built.size_explanation["pair"]["layers"] > 0
    engine = load_engine(built.path)
    img0, img1 = calibration.img0[:40], calibration.img1[:40]
    reference = reference_engine(onnx17).run_pairs(img0, img1)
    logits, times = engine.run_pairs_timed(img0, img1)
    assert compare_logits(reference, logits, float(np.median(reference))).max_abs_diff <= max_diff
    assert times.h2d_ms is not None and times.compute_ms > 0 and times.d2h_ms is not None
    big = np.concatenate([img0] * 3)[:100]  # beyond the profile's max batch: chunked
    assert engine.run_pairs(big, big).shape == (100,)
    assert np.abs(engine.head(engine.embed(img0), engine.embed(img1)) - logits).max() <= max(1e-3, max_diff / 2)
    engine.close()  # pycuda frees the buffers here, in the context, not wherever the garbage collector runs


@pytest.mark.gpu
@needs_gpu
def test_int8_rebuild_reuses_the_calibration_cache(onnx17, calibration_file, tmp_path):
    options = EngineConfig(min_batch=1, opt_batch=16, max_batch=64)
    build_engine(onnx17, tmp_path, "int8", "tensorrt", calibration_file, options)
    caches = sorted(tmp_path.glob("calibration-*.cache"))
    assert len(caches) == 3
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in caches}
    build_engine(onnx17, tmp_path, "int8", "tensorrt", calibration_file, options)
    assert sorted(tmp_path.glob("calibration-*.cache")) == caches
    assert all(p.read_bytes() == before[p][1] for p in caches)
