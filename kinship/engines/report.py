"""The engine report: ``report.json``, ``report.md`` and PNG plots, one row per engine variant.

``kinship.engines.build`` turns each variant's ``EngineOutcome`` into a row and calls ``write_report``;
the pipeline's report stage calls it with the rows of every variant it built::

    rows = [
        EngineResult.from_outcome(outcome, labels, fp32_bytes),   # built: validation, bench, ROC, INT8 size
        EngineResult.not_applicable("onnxruntime", "tf32", "TF32 is a tensor-core format ..."),
        EngineResult.failed("onnxruntime", "int8", "build failed: ..."),     # no figures, ever
    ]
    json_path, md_path = write_report(rows, out_dir, context)

A row's ``status`` is the report's word for the outcome (``outcome.REPORT_WORD``: a built engine is "ok").

``context`` (every key optional): ``title``; ``model`` (the source ONNX path); ``reference_batch``
(default 64, the batch of the table); ``threads``; ``machine`` (dict, shown as is); ``ceiling``
(``Ceiling.to_dict()``); ``flops_per_pair`` (``model_flops_per_pair``); ``torch`` (``{batch:
BenchResult.to_dict()}`` for PyTorch eager at the same threads); ``scoring``
(``ScoringComparison.to_dict()``); ``notes`` (list of lines). ``measure_context`` measures the
ceiling, the FLOPs per pair and PyTorch eager for it.

Rows that failed or do not apply keep only their reason: any figures they carry are dropped, so
no table or plot ever shows numbers that were not measured for that row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from kinship.engines.precision import Precision
from kinship.engines.outcome import REPORT_WORD, STATUS_BUILT, STATUS_FAILED, STATUS_NOT_APPLICABLE, report_word
from kinship.files import write_atomic

OK = REPORT_WORD[STATUS_BUILT]  # a built engine's row
REPORT_STATUSES = tuple(REPORT_WORD.values())
REPORT_FORMAT = "kinship-engine-report/1"
PLOTS = {"throughput": "throughput.png", "roc": "roc.png", "sizes": "sizes.png"}


@dataclass
class EngineResult:
    """One engine variant's row in the report: a view of its ``EngineOutcome``, ``status`` in the report's words.

    ``validation``: ``max_abs_diff``/``mean_abs_diff`` (logits against the FP32 reference),
    ``agreement`` (fraction of pairs given the same decision as FP32 at the threshold), ``auc``,
    ``accuracy``, ``loss``. ``bench``: batch -> ``BenchResult.to_dict()``. ``roc``: ``{"fpr": [...],
    "tpr": [...]}`` on the validation pairs. ``variant`` names the build when it is not just the
    precision (``int8-qdq``). ``hardware`` says what the device does with the precision (``"native"``, ``"runs FP32
    kernels on SM 5.2"``, ``"not applicable"``; empty where unknown) and ``hardware_evidence`` why, with TensorRT's
    per-layer census by input format: a fact about the device, kept on every row.
    """

    backend: str
    precision: str
    status: str
    reason: str = ""
    variant: str = ""
    path: str | None = None
    size_bytes: int | None = None
    build_seconds: float | None = None
    validation: dict | None = None
    bench: dict = field(default_factory=dict)
    int8_size_explanation: str = ""
    roc: dict | None = None
    hardware: str = ""
    hardware_evidence: str = ""

    def __post_init__(self) -> None:
        self.status = report_word(self.status)  # an outcome's status, or already the report's word
        if self.status not in REPORT_STATUSES:
            raise ValueError(f"status must be one of {REPORT_STATUSES}, got {self.status!r}")
        if self.status != OK and not self.reason:
            raise ValueError(f"a {self.status!r} row needs a reason")
        self.variant = self.variant or self.precision
        if self.status != OK:  # never carry figures that were not measured for this row
            self.path, self.size_bytes, self.build_seconds, self.validation = None, None, None, None
            self.bench, self.int8_size_explanation, self.roc = {}, "", None
        self.bench = {int(batch): figures for batch, figures in (self.bench or {}).items()}

    @classmethod
    def failed(cls, backend: str, precision: str, reason: str) -> "EngineResult":
        return cls(backend, Precision.parse(precision).numeric, STATUS_FAILED, reason, variant=precision)

    @classmethod
    def not_applicable(cls, backend: str, precision: str, reason: str) -> "EngineResult":
        return cls(backend, Precision.parse(precision).numeric, STATUS_NOT_APPLICABLE, reason, variant=precision)

    @classmethod
    def from_outcome(cls, outcome, labels: np.ndarray, fp32_bytes: int | None) -> "EngineResult":
        """The row of an ``outcome.EngineOutcome``: figures only for an engine that ran (its validation against
        FP32 on the pairs ``labels`` are of, its sweep, its ROC); ``fp32_bytes`` explains an INT8 file's size."""
        from kinship.engines.registry import outcome_hardware

        row = cls._row_of(outcome, labels, fp32_bytes)
        row.hardware, row.hardware_evidence = outcome_hardware(outcome)
        return row

    @classmethod
    def _row_of(cls, outcome, labels: np.ndarray, fp32_bytes: int | None) -> "EngineResult":
        from kinship.engines.registry import explain_size

        if outcome.status == STATUS_NOT_APPLICABLE:
            return cls.not_applicable(outcome.backend, outcome.variant, outcome.reason or STATUS_NOT_APPLICABLE)
        if outcome.validation is None:
            return cls.failed(outcome.backend, outcome.variant, outcome.reason or STATUS_FAILED)
        v = outcome.validation
        validation = {
            "max_abs_diff": v.agreement.max_abs_diff, "mean_abs_diff": v.agreement.mean_abs_diff,
            "agreement": v.agreement.decision_agreement, "auc": v.metrics["auc"], "accuracy": v.metrics["accuracy"],
            "loss": v.metrics["loss"], "auc_delta": v.auc_delta, "acceptable": v.acceptable,
            "companion_max_abs_diff": v.companion_max_abs_diff, "tar_at_far_1e2": v.metrics["tar_at_far_1e2"],
        }
        return cls(
            outcome.backend, outcome.precision, STATUS_BUILT, reason=outcome.reason or "", variant=outcome.variant,
            path=str(outcome.build.path), size_bytes=outcome.build.size_bytes, build_seconds=outcome.build.seconds,
            validation=validation, bench={b.batch: b.to_dict() for b in outcome.bench},
            int8_size_explanation=explain_size(outcome, fp32_bytes), roc=roc_points(labels, v.logits),
        )

    @classmethod
    def from_dict(cls, data: dict) -> "EngineResult":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def name(self) -> str:
        return f"{self.backend} {self.variant}"

    def to_dict(self) -> dict:
        return asdict(self)


def roc_points(labels: np.ndarray, logits: np.ndarray, max_points: int = 200) -> dict:
    """ROC curve points for the report, thinned to at most ``max_points`` (ends kept)."""
    from kinship.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, logits)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


# --- figures derived for the table ------------------------------------------------------------------


def _bench_at(bench: dict | None, batch: int) -> dict | None:
    if not bench:
        return None
    return bench.get(batch) or bench.get(str(batch))


def row_summary(result: EngineResult, context: dict) -> dict:
    """The table's figures for one row at the reference batch (None where not measured)."""
    batch = int(context.get("reference_batch", 64))
    figures = _bench_at(result.bench, batch)
    validation = result.validation or {}
    summary = {
        "size_mb": result.size_bytes / 1e6 if result.size_bytes is not None else None,
        "pairs_per_s": figures["pairs_per_s"] if figures else None,
        "p50_ms": figures["latency_ms"]["median"] if figures else None,
        "p99_ms": figures["latency_ms"]["p99"] if figures else None,
        "auc": validation.get("auc"),
        "agreement": validation.get("agreement"),
        "gflops": None,
        "share_of_ceiling": None,
        "cpu_share": None,
        "best_call_share": None,
        "vs_torch": None,
    }
    if figures:
        from kinship.engines.ceiling import ceiling_shares

        shares = ceiling_shares(figures, context.get("flops_per_pair"), context.get("ceiling"))
        summary.update({k: shares[k] for k in ("gflops", "share_of_ceiling", "cpu_share", "best_call_share")})
    torch_figures = _bench_at(context.get("torch"), batch)
    if figures and torch_figures:
        summary["vs_torch"] = figures["pairs_per_s"] / torch_figures["pairs_per_s"]
    return summary


# --- writing ----------------------------------------------------------------------------------------


def summarised(results: list, context: dict) -> list[dict]:
    """The rows as report.json holds them: each row's dict with its ``summary`` (``row_summary``)."""
    rows = [r if isinstance(r, EngineResult) else EngineResult.from_dict(r) for r in results]
    return [{**row.to_dict(), "summary": row_summary(row, context)} for row in rows]


def write_report(results: list, out_dir: Path, context: dict) -> tuple[Path, Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out_dir``; returns (json, md).

    ``results`` are ``EngineResult``s or their ``to_dict()``s. Each file is written under a temporary
    name and renamed; ``report.json`` comes last, so its presence means the report is complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r if isinstance(r, EngineResult) else EngineResult.from_dict(r) for r in results]
    context = dict(context)
    summaries = [row_summary(row, context) for row in rows]
    plots = write_plots(rows, out_dir, context)
    md_path = _publish(out_dir / "report.md", markdown(rows, summaries, context, plots))
    payload = {
        "format": REPORT_FORMAT,
        "context": context,
        "results": [{**row.to_dict(), "summary": summary} for row, summary in zip(rows, summaries)],
        "plots": plots,
    }
    json_path = _publish(out_dir / "report.json", json.dumps(payload, indent=2, default=_json_value) + "\n")
    return json_path, md_path


def jsonable(value):
    """``value`` as report.json holds it: arrays as lists, objects with ``to_dict`` as dicts, the rest as text."""
    return json.loads(json.dumps(value, default=_json_value))


def _json_value(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def _publish(path: Path, text: str) -> Path:
    return write_atomic(path, text)


# --- plots ------------------------------------------------------------------------------------------


def write_plots(rows: list[EngineResult], out_dir: Path, context: dict) -> dict[str, str]:
    """Draw the plots that have data; returns plot name -> file name (relative to ``out_dir``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    drawn = {}
    for name, draw in (("throughput", _plot_throughput), ("roc", _plot_roc), ("sizes", _plot_sizes)):
        figure = draw(rows, context)
        if figure is not None:
            drawn[name] = _save_figure(figure, out_dir / PLOTS[name])
    return drawn


def _save_figure(figure, path: Path) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    try:
        write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    finally:
        plt.close(figure)
    return path.name


def _plot_throughput(rows: list[EngineResult], context: dict):
    import matplotlib.pyplot as plt

    series = [(row.name, row.bench) for row in rows if row.status == OK and row.bench]
    if context.get("torch"):
        series.append(("pytorch eager (reference)", context["torch"]))
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, bench in series:
        batches = sorted(int(b) for b in bench)
        style = "--" if label.startswith("pytorch") else "-"
        axes.plot(batches, [_bench_at(bench, b)["pairs_per_s"] for b in batches], style, marker="o", label=label)
    axes.set_xscale("log", base=2)
    batches = sorted({int(b) for _, bench in series for b in bench})
    axes.set_xticks(batches, [str(b) for b in batches])
    axes.minorticks_off()
    axes.set(xlabel="batch size (pairs per call)", ylabel="pairs / s", title="Throughput against batch size")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def _plot_roc(rows: list[EngineResult], context: dict):
    import matplotlib.pyplot as plt

    curves = [row for row in rows if row.status == OK and row.roc]
    if not curves:
        return None
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for row in curves:
        auc = (row.validation or {}).get("auc")
        label = row.name + (f" (AUC {auc:.4f})" if auc is not None else "")
        axes.plot(row.roc["fpr"], row.roc["tpr"], label=label)
    axes.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    axes.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC on validation pairs")
    axes.legend(fontsize=8, loc="lower right")
    return figure


def _plot_sizes(rows: list[EngineResult], context: dict):
    import matplotlib.pyplot as plt

    if not rows:
        return None
    figure, axes = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    names = [row.name for row in rows]
    sizes = [row.size_bytes / 1e6 if row.size_bytes is not None else 0.0 for row in rows]
    axes.barh(names, sizes, color=["tab:blue" if row.status == OK else "lightgrey" for row in rows])
    for index, row in enumerate(rows):
        text = f"{sizes[index]:.2f} MB" if row.size_bytes is not None else row.status
        axes.text(sizes[index], index, f" {text}", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set(xlabel="engine file size (MB)", title="Engine sizes")
    axes.set_xlim(0, max(sizes + [1e-3]) * 1.35)
    return figure


# --- markdown ---------------------------------------------------------------------------------------

_COLUMNS = ("backend", "precision", "status", "size MB", "pairs/s", "p50 ms", "p99 ms", "AUC", "agreement", "GFLOP/s",
            "share of ceiling", "share per CPU-s", "vs PyTorch")


def markdown(rows: list[EngineResult], summaries: list[dict], context: dict, plots: dict[str, str]) -> str:
    """The human report: setup, machine ceiling, the engine table, test-set scoring, INT8 notes, plots."""
    batch = int(context.get("reference_batch", 64))
    lines = [f"# {context.get('title', 'Engine report')}", ""]
    lines += _setup_lines(context)
    lines += ["", f"## Engines at batch {batch}", "", _md_row(_COLUMNS), _md_row(["---"] * len(_COLUMNS))]
    lines += [_md_row(_table_cells(row, summary)) for row, summary in zip(rows, summaries)]
    if any(row.status == OK and row.precision in ("fp16", "int8") for row in rows) and context.get("ceiling"):
        lines += ["", "Shares are of the FP32 GEMM ceiling, with the FP32 model's FLOPs: INT8 (VNNI) and FP16 "
                  "arithmetic have other ceilings, so their shares say how much faster than FP32 they are, and can pass 100%."]
    torch_figures = _bench_at(context.get("torch"), batch)
    if torch_figures:
        lines += ["", f"PyTorch eager (inference mode, same threads, batch {batch}): "
                  f"{torch_figures['pairs_per_s']:.1f} pairs/s, p50 {torch_figures['latency_ms']['median']:.2f} ms, "
                  f"p99 {torch_figures['latency_ms']['p99']:.2f} ms. \"vs PyTorch\" is each engine's pairs/s over this. "
                  "Where glibc is the allocator it was set to keep freed memory (PyTorch allocates each activation "
                  "afresh; without it, page faults cost it up to half its speed, while ONNX Runtime has its own arena)."]
    lines += _hardware_lines(rows)
    lines += _slice_lines(rows, torch_figures, batch)
    lines += _scoring_lines(context.get("scoring"))
    explained = [row for row in rows if row.int8_size_explanation]
    if explained:
        lines += ["", "## INT8 file sizes", ""] + [f"- **{row.name}**: {row.int8_size_explanation}" for row in explained]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()]
    if context.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in context["notes"]]
    return "\n".join(lines) + "\n"


def _setup_lines(context: dict) -> list[str]:
    lines = []
    if context.get("model"):
        lines.append(f"- model: `{context['model']}`")
    if context.get("threads"):
        lines.append(f"- threads: {context['threads']} (ONNX Runtime intra-op and PyTorch alike)")
    for key, value in (context.get("machine") or {}).items():
        lines.append(f"- {key}: {value}")
    ceiling = context.get("ceiling")
    if ceiling:
        measured = ", ".join(f"{lib} {rate:.1f}" for lib, rate in ceiling.get("by_library", {}).items())
        lines.append(
            f"- machine ceiling: {ceiling['gflops']:.1f} GFLOP/s, FP32 GEMM {ceiling.get('n', '?')}x{ceiling.get('n', '?')} "
            f"measured in this run ({measured} GFLOP/s sustained; the best of torch and onnxruntime, "
            f"{ceiling.get('library', '?')}, is the ceiling; numpy's BLAS picks its own threads)"
        )
        if ceiling.get("cpu_gflops"):
            lines.append(f"- per CPU-second: GEMM {ceiling['cpu_gflops']:.1f} GFLOP per CPU-second of this process; "
                         "\"share per CPU-s\" divides engine and GEMM alike by the CPU time they used, which other "
                         f"work on the machine does not dilute (fastest single GEMM: {ceiling.get('peak_gflops', 0):.1f} GFLOP/s)")
    if context.get("flops_per_pair"):
        lines.append(f"- model work: {context['flops_per_pair'] / 1e6:.1f} MFLOP per pair (2 x MACs of Conv/Gemm/MatMul)")
    return lines


def _table_cells(row: EngineResult, summary: dict) -> list[str]:
    status = row.status if row.status == OK else f"{row.status}: {row.reason}"
    if row.status == OK and row.hardware not in ("", "native"):  # built, but not in the precision its name says
        status = f"{OK} ({row.hardware})"
    values = [
        (summary["size_mb"], "{:.2f}"), (summary["pairs_per_s"], "{:.1f}"), (summary["p50_ms"], "{:.2f}"),
        (summary["p99_ms"], "{:.2f}"), (summary["auc"], "{:.4f}"), (summary["agreement"], "{:.2%}"),
        (summary["gflops"], "{:.1f}"), (summary["share_of_ceiling"], "{:.0%}"), (summary["cpu_share"], "{:.0%}"),
        (summary["vs_torch"], "{:.2f}x"),
    ]
    return [row.backend, row.variant, status] + ["—" if value is None else fmt.format(value) for value, fmt in values]


def _hardware_lines(rows: list[EngineResult]) -> list[str]:
    """Per row, what this device does with its precision, and the evidence where it is not native."""
    known = [row for row in rows if row.hardware]
    if not known:
        return []
    lines = ["", "## Precision on this device", "",
             "What the device running each engine does with its precision: native arithmetic, FP32 kernels under "
             "another name (TensorRT builds FP16/INT8 engines from FP32 kernels on GPUs without that arithmetic), or "
             "not applicable.", ""]
    return lines + [f"- **{row.name}**: {row.hardware}" + (f" ({row.hardware_evidence})" if row.hardware_evidence else "")
                    for row in known]


def _slice_lines(rows: list[EngineResult], torch_figures: dict | None, batch: int) -> list[str]:
    """Pairs/s of each alternating slice at ``batch``: the spread within a run, and whether it moved alike."""
    series = [(row.name, (_bench_at(row.bench, batch) or {}).get("rounds_pairs_per_s")) for row in rows if row.status == OK]
    series.append(("pytorch eager", (torch_figures or {}).get("rounds_pairs_per_s")))
    series = [(name, values) for name, values in series if values]
    if not series:
        return []
    lines = ["", f"Timed in {len(series[0][1])} alternating slices (order reversed every other round), so the "
             "ratios are side by side; pairs/s per slice:"]
    return lines + [f"- {name}: " + " / ".join(f"{value:,.0f}" for value in values) for name, values in series]


def _scoring_lines(scoring: dict | None) -> list[str]:
    if not scoring:
        return []
    return [
        "", "## Scoring a test set", "",
        f"{scoring['pairs']} pairs over {scoring['unique_images']} unique images, batch {scoring['batch']}, "
        f"median of {scoring['repeats']} runs:", "",
        f"- two-input model (both images of every pair encoded): {scoring['two_input_pairs_per_s']:.1f} pairs/s",
        f"- encoder once per image + head per pair: {scoring['encoder_head_pairs_per_s']:.1f} pairs/s",
        f"- gain {scoring['gain']:.2f}x; expected from the work saved (2 x pairs / images) {scoring['expected_gain']:.2f}x; "
        f"logits agree to {scoring['max_abs_diff']:.2g}",
    ]


def _md_row(cells) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


# --- what the report measures beside the rows ------------------------------------------------------


def measure_context(onnx_path: Path, rows: list[EngineResult], context: dict, ceiling_seconds: float = 2.0) -> dict:
    """Ceiling, FLOPs per pair and (with a ``.pt`` beside the ONNX) PyTorch eager at the reference batch."""
    from kinship.engines.bench import bench_torch
    from kinship.engines.ceiling import machine_ceiling
    from kinship.engines.flops import model_flops_per_pair
    from kinship.host import default_threads

    threads = int(context.get("threads") or default_threads())
    measured = {"threads": threads, "ceiling": machine_ceiling(ceiling_seconds, threads=threads).to_dict()}
    measured["flops_per_pair"] = model_flops_per_pair(onnx_path)
    batch = int(context.get("reference_batch", 64))
    checkpoint = Path(onnx_path).with_suffix(".pt")
    benched = [figures for row in rows for figures in [_bench_at(row.bench, batch)] if figures]
    if "torch" not in context and checkpoint.is_file() and benched:  # the sweep may have timed it side by side
        seconds = max(1.0, max(figures["wall_s"] for figures in benched))
        measured["torch"] = {batch: bench_torch(checkpoint, batch, seconds, 0.5, threads=threads).to_dict()}
    return measured
