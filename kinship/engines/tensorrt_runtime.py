"""Running a built TensorRT engine: the CUDA context made current per thread, the engine's I/O as it declares it,
and ``PartRunner``, which feeds one engine from growable pinned buffers and times each call in trtexec's order;
with the host-side work a call needs (chunking to the profile's batch range, padding, matching inputs by name).

Like ``kinship.engines.tensorrt_backend`` (the builder, which uses the context and the logger from here), it
imports ``tensorrt`` and ``pycuda`` only inside the functions that need them, so it imports anywhere; everything
but the GPU calls is tested on the CPU with stand-ins.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from kinship.engines import tensorrt_compat as compat
from kinship.engines.base import PhaseTimes
from kinship.errors import UserError


def chunks(total: int, limit: int) -> list[slice]:
    """Slices of at most ``limit`` rows covering ``total`` rows (the profile's max batch bounds a call)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return [slice(s, min(s + limit, total)) for s in range(0, total, limit)]


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with its last row repeated up to ``rows`` rows (a call below the profile's minimum batch has no
    valid shape); the caller drops the extra rows from the output. Repeating a real row keeps every value finite."""
    if len(array) >= rows:
        return array
    if len(array) == 0:
        raise ValueError("cannot pad an empty batch")
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), axis=0)])


def match_inputs(feeds: dict[str, np.ndarray], inputs: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """The engine's inputs by NAME, each contiguous in the engine's dtype; a missing or unknown name, or sides with
    different row counts, is a UserError naming them."""
    missing, unknown = sorted(set(inputs) - set(feeds)), sorted(set(feeds) - set(inputs))
    if missing or unknown:
        raise UserError(f"the engine's inputs are {sorted(inputs)}, given {sorted(feeds)}"
                        + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else ""))
    rows = {name: len(feeds[name]) for name in inputs}
    if len(set(rows.values())) > 1:
        raise UserError(f"every input needs the same number of rows, got {rows}")
    return {name: np.ascontiguousarray(feeds[name], dtype=dtype) for name, dtype in inputs.items()}


def only_output(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The output called ``name``, or the engine's one output when it has a single one under another name."""
    if name in outputs:
        return outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    raise UserError(f"the engine has outputs {sorted(outputs)}, none called {name!r}")


# --------------------------------------------------------------------------- CUDA context per thread


class ThreadContexts:
    """pycuda keeps a context stack PER THREAD: a context made current on one thread is not current on another
    (which then fails with "invalid device context"). ``active()`` pushes the device's primary context (the one
    TensorRT's runtime API uses too) on the calling thread for the duration of a build or run, and pops it after;
    nested uses on one thread push once."""

    def __init__(self, primary: Callable[[], object]):
        self._primary = primary
        self._local = threading.local()

    @contextmanager
    def active(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._primary().push()
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            if self._local.depth == 0:
                self._primary().pop()


_primary_lock = threading.Lock()


@lru_cache(maxsize=1)
def _retained_primary_context():
    import pycuda.driver as cuda

    cuda.init()
    return cuda.Device(0).retain_primary_context()


def _primary_context():
    with _primary_lock:  # one retain per process, whichever thread asks first
        return _retained_primary_context()


_CONTEXTS = ThreadContexts(_primary_context)


def cuda_context():
    """``with cuda_context():`` the GPU's primary context is current on this thread."""
    return _CONTEXTS.active()


# --------------------------------------------------------------------------- the TensorRT logger


_logger = None


def _trt_logger():
    import tensorrt as trt

    global _logger
    if _logger is None:
        _logger = trt.Logger(trt.Logger.WARNING)
    return _logger


# --------------------------------------------------------------------------- running one engine


@dataclass(frozen=True)
class TensorIO:
    """An engine's I/O as the engine itself declares it: input and output names with their numpy dtypes, and the
    batch range of its optimisation profile."""

    inputs: dict[str, np.dtype]
    outputs: dict[str, np.dtype]
    min_batch: int
    max_batch: int


def engine_io(engine, trt) -> TensorIO:
    """Read names, modes and dtypes (``trt.nptype(engine.get_tensor_dtype(name))``) and profile 0's batch range."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    dtypes = {name: np.dtype(trt.nptype(engine.get_tensor_dtype(name))) for name in names}
    inputs = {n: dtypes[n] for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
    outputs = {n: dtypes[n] for n in names if n not in inputs}
    if not inputs or not outputs:
        raise UserError(f"the engine has inputs {sorted(inputs)} and outputs {sorted(outputs)}: not a kinship engine")
    ranges = [engine.get_tensor_profile_shape(name, 0) for name in inputs]  # (min, opt, max) shapes
    return TensorIO(inputs, outputs, max(int(r[0][0]) for r in ranges), min(int(r[2][0]) for r in ranges))


class PartRunner:
    """One deserialised engine with its execution context, stream, events and growable buffers.

    ``driver`` is ``pycuda.driver`` (stand-ins in the tests) and ``scope`` makes the CUDA context current on the
    calling thread (``cuda_context``) for each call. pycuda frees device and pinned memory, streams and events only
    where their context is current (elsewhere it warns "could not be cleaned up" and leaks), so ``close`` releases
    them all inside ``scope``; a runner dropped without ``close`` is closed by ``__del__``, which pushes the
    context on whichever thread the garbage collector runs."""

    def __init__(self, engine, io: TensorIO, driver, scope: Callable = cuda_context):
        self.engine, self.io, self.cuda, self.scope = engine, io, driver, scope
        self.device: dict[str, object] = {}
        self.host: dict[str, np.ndarray] = {}
        with scope():
            self.context = engine.create_execution_context()
            self.stream = driver.Stream()
            self.events = [driver.Event() for _ in range(4)]
        self.closed = False

    def close(self) -> None:
        """Free every buffer and drop the events, the stream and the execution context, inside the context
        (idempotent; the runner cannot run afterwards)."""
        if getattr(self, "closed", True):  # closed, or __init__ never finished
            return
        with self.scope():
            for name in list(self.device):
                self._free(name)
            self.events, self.stream, self.context = [], None, None  # their destructors run here, in the context
        self.closed = True

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit pycuda may be gone: nothing left to free then
            pass

    def _free(self, name: str) -> None:
        """Free one tensor's device buffer and its pinned host buffer (a HostAllocation under the numpy array)."""
        self.device.pop(name).free()
        pinned = getattr(self.host.pop(name, None), "base", None)
        if hasattr(pinned, "free"):
            pinned.free()

    @classmethod
    def open(cls, path: Path) -> "PartRunner":
        import pycuda.driver as cuda
        import tensorrt as trt

        with cuda_context():
            engine = trt.Runtime(_trt_logger()).deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise UserError(f"{path} is not a TensorRT engine this TensorRT ({trt.__version__}) can load")
        return cls(engine, engine_io(engine, trt), cuda)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[object, np.ndarray]:
        size = int(np.prod(shape))
        host = self.host.get(name)
        if host is None or host.dtype != dtype or host.size < size:  # grow only: later calls reuse
            if name in self.device:  # called inside scope(): the old buffers are freed in the context
                self._free(name)
            self.device[name] = self.cuda.mem_alloc(max(size, 1) * np.dtype(dtype).itemsize)
            self.host[name] = self.cuda.pagelocked_empty(max(size, 1), dtype)
        return self.device[name], self.host[name][:size].reshape(shape)

    def _prepare(self, arrays: dict[str, np.ndarray]) -> tuple[list, dict]:
        """All host-side work of a call, before any timing: shapes, buffers, pinned copies, tensor addresses."""
        staged = []
        for name, array in arrays.items():
            compat.checked(self.context.set_input_shape, name, tuple(array.shape))
            device, host = self._buffer(name, array.shape, array.dtype)
            np.copyto(host, array)
            compat.checked(self.context.set_tensor_address, name, int(device))
            staged.append((device, host))
        outputs = {}
        for name, dtype in self.io.outputs.items():
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"TensorRT left output {name!r} with shape {shape}: an input shape is not set")
            device, host = self._buffer(name, shape, dtype)
            compat.checked(self.context.set_tensor_address, name, int(device))
            outputs[name] = (device, host)
        return staged, outputs

    def _execute(self, staged: list, outputs: dict) -> PhaseTimes:
        """The timed part, in trtexec's order: H2D between the first two events, ONLY the enqueued execution
        between the second and third (its CPU time measured apart, as trtexec's enqueue time), then D2H."""
        start, copied_in, computed, copied_out = self.events
        start.record(self.stream)
        for device, host in staged:
            self.cuda.memcpy_htod_async(device, host, self.stream)
        copied_in.record(self.stream)
        began = time.perf_counter()
        ok = self.context.execute_async_v3(self.stream.handle)
        enqueue_ms = (time.perf_counter() - began) * 1e3
        if not ok:
            raise RuntimeError("TensorRT execute_async_v3 returned False (see the TensorRT log above)")
        computed.record(self.stream)
        for device, host in outputs.values():
            self.cuda.memcpy_dtoh_async(host, device, self.stream)
        copied_out.record(self.stream)
        self.stream.synchronize()
        return PhaseTimes(start.time_till(copied_in), copied_in.time_till(computed), computed.time_till(copied_out),
                          enqueue_ms)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], PhaseTimes]:
        """One call within the profile's batch range (fewer rows than its minimum are padded, and dropped again);
        inputs by name; every output the engine has, in its own dtype; phases timed with CUDA events."""
        arrays = match_inputs(feeds, self.io.inputs)
        rows = len(next(iter(arrays.values())))
        if not 1 <= rows <= self.io.max_batch:
            raise ValueError(f"{rows} rows is outside the profile's 1..{self.io.max_batch} (use run_all)")
        arrays = {name: pad_rows(array, self.io.min_batch) for name, array in arrays.items()}
        with self.scope():
            staged, outputs = self._prepare(arrays)
            times = self._execute(staged, outputs)
        return {name: host[:rows].copy() for name, (_, host) in outputs.items()}, times

    def run_all(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], PhaseTimes]:
        """Any batch size: chunks of at most the profile's max batch, outputs joined, phase times summed."""
        arrays = match_inputs(feeds, self.io.inputs)
        total = len(next(iter(arrays.values())))
        if total == 0:
            raise UserError("no rows to run")
        results, summed = [], PhaseTimes(0.0, 0.0, 0.0, 0.0)
        for part in chunks(total, self.io.max_batch):
            outputs, times = self.run({name: array[part] for name, array in arrays.items()})
            results.append(outputs)
            summed = PhaseTimes(summed.h2d_ms + times.h2d_ms, summed.compute_ms + times.compute_ms,
                                summed.d2h_ms + times.d2h_ms, summed.enqueue_ms + times.enqueue_ms)
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}, summed
