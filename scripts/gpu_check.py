#!/usr/bin/env python3
"""``make gpu-check``: what this host's GPU does for the project, in one table and one JSON, in about 5 minutes.

On any CUDA or ROCm host it runs, on one fixed small synthetic set (``kinship.synth``):

1. the original project's AMP comparison: the same training with AMP off (FP32) and with ``--amp on``
   (fp16 + grad scaler or bf16, by architecture; fp16 also where ``auto`` turns AMP off for want of fast fp16,
   so the table shows what AMP buys there), epoch time and validation AUC / accuracy of each;
2. the pair model's throughput in PyTorch on the GPU (pairs/s at a few batch sizes, FP32 and the AMP dtype);
3. the TensorRT engines, where TensorRT imports and supports this GPU (``kinship.engines.build.build_engines``:
   build, check against FP32, benchmark), each row saying whether the GPU runs its precision natively.

It needs only torch and this library (no Prefect, no object store). With no GPU it prints one line and exits 2,
unless ``--cpu`` is given: then the same steps run on the CPU with tiny sizes, ONNX Runtime standing in for
TensorRT (which is how the test proves the script end to end). Exit 1 when a step failed (the others still run).

    python scripts/gpu_check.py [--out out/gpu-check] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sizes:
    """How much work each step does: a GPU run is sized for about 5 minutes, a --cpu run for well under one."""

    families: int
    image_size: int
    width: int
    epochs: int
    batch_size: int
    max_batches_per_epoch: int  # 0 = every batch
    throughput_batches: tuple[int, ...]
    throughput_seconds: float
    precisions: tuple[str, ...]
    engine_batches: tuple[int, ...]
    validation_pairs: int


GPU_SIZES = Sizes(families=160, image_size=64, width=32, epochs=4, batch_size=128, max_batches_per_epoch=0,
                  throughput_batches=(1, 16, 64, 256, 1024), throughput_seconds=1.0,
                  precisions=("fp32", "tf32", "fp16", "int8", "int8-qdq"), engine_batches=(1, 64, 256),
                  validation_pairs=0)
CPU_SIZES = Sizes(families=24, image_size=32, width=8, epochs=2, batch_size=32, max_batches_per_epoch=4,
                  throughput_batches=(1, 8), throughput_seconds=0.2, precisions=("fp32", "tf32", "fp16"),
                  engine_batches=(8,), validation_pairs=64)


def say(message: str) -> None:
    """Progress on stderr; stdout carries only the table."""
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the device


def device_facts(force_cpu: bool) -> dict | None:
    """What runs the check: the first CUDA/ROCm GPU torch sees (None if there is none), or the CPU with ``force_cpu``."""
    import torch

    from kinship.host import cpu_name

    base = {"torch": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)}
    if force_cpu:
        return {**base, "kind": "cpu", "name": cpu_name()}
    if not torch.cuda.is_available():
        return None
    from kinship.engines import tensorrt_compat

    properties = torch.cuda.get_device_properties(0)
    if base["hip"]:
        return {**base, "kind": "rocm", "name": properties.name, "arch": getattr(properties, "gcnArchName", "")}
    capability = tuple(torch.cuda.get_device_capability(0))
    return {**base, "kind": "cuda", "name": properties.name, "capability": "%d.%d" % capability,
            "generation": tensorrt_compat.generation(capability).name,
            "tensorrt_release": tensorrt_compat.generation(capability).release_text,
            "precision_support": tensorrt_compat.precision_support(capability)}


def no_gpu_line() -> str:
    import torch

    return (f"gpu-check: torch {torch.__version__} sees no CUDA or ROCm device (cuda {torch.version.cuda}, hip "
            f"{getattr(torch.version, 'hip', None)}); nothing was measured. --cpu runs the same steps on the CPU")


# --------------------------------------------------------------------------- the steps


def make_data(work: Path, sizes: Sizes) -> Path:
    """The fixed synthetic set (same seed every run, so figures compare across hosts)."""
    import os

    from kinship.synth import SynthConfig, generate

    folder = work / f"data-{sizes.families}-{sizes.image_size}"
    if not (folder / "train").is_dir():
        generate(SynthConfig(families=sizes.families, test_families=4, size=sizes.image_size, seed=16,
                             workers=max(1, min(8, os.cpu_count() or 1))), folder, force=True)
    return folder


def train_config(sizes: Sizes, device: str, amp: str):
    from kinship.train_config import TrainConfig

    return TrainConfig(epochs=sizes.epochs, batch_size=sizes.batch_size, image_size=sizes.image_size, width=sizes.width,
                       max_batches_per_epoch=sizes.max_batches_per_epoch, amp=amp, device=device, seed=0)


def amp_comparison(data: Path, work: Path, sizes: Sizes, device: str, amp: str) -> dict:
    """The same training with AMP off and with ``amp``: epoch times (the first, which includes warm-up, apart),
    validation AUC and accuracy of the last epoch."""
    import shutil

    from kinship.train import train

    runs = {}
    for label, mode in (("fp32", "off"), ("amp", amp)):
        say(f"training with --amp {mode} ({sizes.epochs} epochs)")
        shutil.rmtree(work / f"train-{label}", ignore_errors=True)  # a check measures afresh, never resumes
        result = train(data, work / f"train-{label}", train_config(sizes, device, mode))
        seconds = [record["epoch_seconds"] for record in result.history]
        last = result.history[-1]
        runs[label] = {"amp": mode, "precision": result.precision, "epoch_seconds": seconds,
                       "steady_epoch_seconds": statistics.mean(seconds[1:] or seconds),
                       "images_per_second": statistics.mean(r["images_per_second"] for r in result.history),
                       "val_auc": last["val_auc"], "val_accuracy": last["val_accuracy"], "best_auc": result.best_auc,
                       "model": str(result.run_dir / "model.pt")}
    runs["speedup"] = runs["fp32"]["steady_epoch_seconds"] / runs["amp"]["steady_epoch_seconds"]
    return runs


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _pairs_per_second(model, batch: int, image_size: int, device, autocast_dtype, seconds: float) -> float:
    import torch

    x0 = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    x1 = torch.randn_like(x0)
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(device.type,
                                                                                                         enabled=False)
    with torch.inference_mode(), context:
        for _ in range(3):  # warm-up: kernel selection, allocator
            model(x0, x1)
        _synchronize(device)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(x0, x1)
            calls += 1
        _synchronize(device)
        elapsed = time.perf_counter() - started
    return batch * calls / elapsed


def torch_throughput(checkpoint: Path, sizes: Sizes, device_name: str, amp: str) -> list[dict]:
    """Pairs/s of the pair model in PyTorch eager at each batch size, in FP32 and in the AMP dtype ``amp`` picks."""
    import torch

    from kinship.checkpoint import load_model
    from kinship.train import choose_precision

    precision = choose_precision(device_name, amp)
    model, _ = load_model(checkpoint)
    model = model.to(precision.device).to(memory_format=torch.channels_last).eval()
    rows = []
    for label, dtype in (("fp32", None), (str(precision.autocast_dtype).replace("torch.", ""), precision.autocast_dtype)):
        if label != "fp32" and dtype is None:
            continue  # AMP resolved to off here: nothing more to time
        for batch in sizes.throughput_batches:
            say(f"PyTorch {label} at batch {batch}")
            rate = _pairs_per_second(model, batch, sizes.image_size, precision.device, dtype, sizes.throughput_seconds)
            rows.append({"dtype": label, "batch": batch, "pairs_per_s": rate})
    return rows


def engine_backend(force_cpu: bool) -> tuple[str | None, str]:
    """(backend, why): TensorRT where it is usable on this GPU; ONNX Runtime standing in on --cpu; else None."""
    if force_cpu:
        return "onnxruntime", "--cpu: ONNX Runtime on the CPU stands in for TensorRT"
    from kinship.engines.tensorrt_backend import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    return (None, reason) if reason else ("tensorrt", "TensorRT usable on this GPU")


def engines(run_dir: Path, data: Path, work: Path, sizes: Sizes, backend: str) -> dict:
    """Export the FP32 model (opset 17 for TensorRT 8.x), then build, check and benchmark each precision."""
    from kinship.checkpoint import read_checkpoint
    from kinship.engines.build import EnginesJob, build_engines
    from kinship.engines.precision import parse_precisions
    from kinship.engines.config import EngineConfig
    from kinship.engines.registry import outcome_hardware
    from kinship.export import export_checkpoint, validation_sample

    opset = 18
    if backend == "tensorrt":
        from kinship.engines.tensorrt_backend import host_facts

        opset = 17 if (host_facts().version or "").startswith("8.") else 18
    checkpoint = run_dir / "model.pt"
    say(f"exporting {checkpoint} (ONNX opset {opset})")
    img0, img1 = validation_sample(data, read_checkpoint(checkpoint)["metadata"], sizes.image_size, count=32)
    files, _ = export_checkpoint(checkpoint, run_dir / "model.onnx", img0, img1, opset=opset)
    config = EngineConfig(backend=backend, min_batch=1, opt_batch=64, max_batch=max(256, *sizes.engine_batches),
                          companions=False, validation_pairs=sizes.validation_pairs, bench_batches=sizes.engine_batches,
                          bench_seconds=0.5 if backend == "tensorrt" else 0.2, warmup_seconds=0.1, bench_rounds=1,
                          ceiling_seconds=0)
    say(f"building {', '.join(sizes.precisions)} with {backend}")
    result = build_engines(files.pair, data, work / "engines", EnginesJob(precisions=parse_precisions(sizes.precisions), engine=config))
    rows = []
    for record in result.records:
        hardware, evidence = outcome_hardware(record)
        validation = record.validation
        rows.append({
            "variant": record.variant, "status": record.status, "reason": record.reason or "",
            "hardware": hardware, "hardware_evidence": evidence, "size_bytes": record.size_bytes,
            "auc": validation.metrics["auc"] if validation else None,
            "agreement": validation.agreement.decision_agreement if validation else None,
            "pairs_per_s": {b.batch: b.pairs_per_s for b in record.bench},
        })
    return {"backend": backend, "backend_note": result.backend_note, "opset": opset, "rows": rows,
            "report": result.report_files}


# --------------------------------------------------------------------------- output


def table(results: dict) -> str:
    """One plain-text table of every figure (section, item, figures)."""
    lines = []
    amp = results.get("amp") or {}
    if "error" in amp:
        lines.append(("AMP", "failed", amp["error"]))
    elif amp:
        for label in ("fp32", "amp"):
            run = amp[label]
            speed = f" ({amp['speedup']:.2f}x FP32)" if label == "amp" else ""
            lines.append(("AMP", f"{label}: {run['precision']}",
                          f"epoch {run['steady_epoch_seconds']:.2f} s{speed}, {run['images_per_second']:,.0f} img/s, "
                          f"val AUC {run['val_auc']:.4f}, accuracy {run['val_accuracy']:.4f}"))
    throughput = results.get("throughput")
    if isinstance(throughput, dict):
        lines.append(("PyTorch", "failed", throughput["error"]))
    for row in throughput or []:
        lines.append(("PyTorch", f"{row['dtype']} batch {row['batch']}", f"{row['pairs_per_s']:,.0f} pairs/s"))
    found = results.get("engines") or {}
    if "rows" not in found:
        lines.append(("engines", "skipped" if "skipped" in found else "failed", found.get("skipped") or found.get("error", "")))
    for row in found.get("rows", []):
        speeds = ", ".join(f"{rate:,.0f} @{batch}" for batch, rate in row["pairs_per_s"].items())
        auc = f"AUC {row['auc']:.4f}, " if row["auc"] is not None else ""
        what = row["reason"] if row["status"] != "built" else f"{auc}{speeds} pairs/s" if speeds else auc.rstrip(", ")
        hardware = f" ({row['hardware']})" if row["hardware"] not in ("", row["status"]) else ""
        lines.append((found["backend"], f"{row['variant']}: {row['status']}{hardware}", what))
    width = [max(len(str(line[i])) for line in lines + [("section", "item", "")]) for i in (0, 1)]
    device = results["device"]
    where = device.get("capability") and f"SM {device['capability']}" or device.get("arch") or device["kind"]
    head = f"gpu-check on {device['name']} ({where}), torch {device['torch']}: {results['seconds']:.0f} s"
    body = [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in [("section", "item", "figures")] + lines]
    return "\n".join([head, *body])


def run_step(results: dict, key: str, step) -> bool:
    """Run one step into ``results[key]``; a failure is recorded with its reason and the others go on."""
    try:
        results[key] = step()
        return True
    except Exception as error:  # a check reports what broke and keeps measuring the rest
        from kinship.errors import reason_of

        results[key] = {"error": reason_of(error)}
        say(f"{key} failed: {reason_of(error)}")
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/gpu-check"), help="folder for gpu-check.json and work files")
    parser.add_argument("--cpu", action="store_true", help="no GPU needed: run every step on the CPU with tiny sizes")
    args = parser.parse_args(argv)
    device = device_facts(args.cpu)
    if device is None:
        print(no_gpu_line())
        return 2
    started = time.perf_counter()
    sizes = CPU_SIZES if args.cpu else GPU_SIZES
    # --amp on, not auto: auto is off on a CPU and on GPUs without fast fp16 (M40, P40), which would leave no AMP
    # run to compare there. On a CPU, bf16 autocast.
    amp, device_name = ("bf16", "cpu") if args.cpu else ("on", "cuda")
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    results = {"device": device, "sizes": asdict(sizes)}
    data = make_data(work, sizes)
    ok = run_step(results, "amp", lambda: amp_comparison(data, work, sizes, device_name, amp))
    model = Path(results["amp"]["fp32"]["model"]) if ok else None
    ok &= run_step(results, "throughput", lambda: torch_throughput(model, sizes, device_name, amp)) if model else False
    backend, why = engine_backend(args.cpu)
    if backend is None:
        results["engines"] = {"skipped": why}
    elif model:
        ok &= run_step(results, "engines", lambda: {**engines(model.parent, data, work, sizes, backend), "why": why})
    results["seconds"] = time.perf_counter() - started
    json_path = args.out / "gpu-check.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    print(f"wrote {json_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
