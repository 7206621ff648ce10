"""The run's final report: what was trained on what, how each engine did, what became champion, where it all is.

Built from the manifests alone (never from a host's folders), so the orchestrating flow can write it on
a machine that holds none of the files. ``engine_table`` gives the rows the Prefect table artifact shows;
``links`` the store objects worth a click; ``render`` the markdown stored as ``runs/<id>/report.md``.
"""

from __future__ import annotations

from kinship.baseline import BaselineComparison
from kinship.manifests import EnginesManifest, TrainManifest
from kinship.storage import ArtifactStore, join_key

TABLE_COLUMNS = ("variant", "backend", "status", "size_mb", "pairs_per_s", "p50_ms", "p99_ms", "auc", "agreement", "note")


def _rounded(value, places: int):
    return round(value, places) if isinstance(value, (int, float)) else None


def engine_table(engines_manifest: EnginesManifest) -> list[dict]:
    """One row per engine variant at the report's reference batch; figures only where measured."""
    rows = []
    for row in engines_manifest.get("rows", []):
        summary = row.get("summary") or {}
        rows.append({
            "variant": row.get("variant") or row.get("precision"), "backend": row.get("backend"),
            "status": row.get("status"), "size_mb": _rounded(summary.get("size_mb"), 3),
            "pairs_per_s": _rounded(summary.get("pairs_per_s"), 1), "p50_ms": _rounded(summary.get("p50_ms"), 3),
            "p99_ms": _rounded(summary.get("p99_ms"), 3), "auc": _rounded(summary.get("auc"), 4),
            "agreement": _rounded(summary.get("agreement"), 4), "note": row.get("reason") or "",
        })
    return rows


def links(train_manifest: TrainManifest, engines_manifest: EnginesManifest, promotion: dict,
          report_uri: str | None = None) -> list[dict]:
    """The store objects a reader most wants: report, models, calibration, manifests, champion pointer.

    An object stored by an earlier run (a cached stage reused it) is marked ``(reused)``.
    """
    found = [("run report", report_uri)] if report_uri else []
    engines_report = engines_manifest.get("report", {}).get("report.md")
    found.append(("engine report", engines_report["uri"] if engines_report else None))
    for name in ("model.onnx", "model.pt", "calibration.npz", "metrics.json"):
        ref = train_manifest["artifacts"].get(name)
        found.append((name, ref["uri"] if ref else None))
    found += [("training manifest", train_manifest["manifest"]["uri"]),
              ("engines manifest", engines_manifest["manifest"]["uri"]), ("champion pointer", promotion.get("uri"))]
    own = f"/runs/{train_manifest['run_id']}/"
    return [{"name": name if own in uri or "/runs/" not in uri else f"{name} (reused)", "uri": uri}
            for name, uri in found if uri]


def _format(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _training_lines(manifest: TrainManifest) -> list[str]:
    config, metrics, calibration = manifest["train_config"], manifest["metrics"], manifest.get("calibration", {})
    checks = ", ".join(f"{c['name']} {c['max_abs_diff']:.1e}" for c in manifest.get("export_checks", []))
    return [
        "## Training", "",
        f"- data set: `{manifest['dataset']['uri']}` (sha256 {manifest['dataset']['sha256'][:16]})",
        f"- configuration: {config['epochs']} epochs, {config['image_size']} px, width {config['width']}, "
        f"embedding {config['embedding_dim']}, batch {config['batch_size']}, lr {config['lr']}, seed {config['seed']}"
        + (f", at most {config['max_batches_per_epoch']} batches per epoch" if config.get("max_batches_per_epoch") else ""),
        f"- validation ROC AUC **{_format(metrics.get('best_val_auc'), '.4f')}** (best epoch {metrics.get('best_epoch')} "
        f"of {metrics.get('epochs')}), on {metrics.get('precision')}, host `{manifest['host'].get('hostname')}` "
        f"({manifest['host'].get('role')})",
        f"- {_baseline_line(metrics)}",
        f"- ONNX export checked against PyTorch (max abs diff): {checks or '-'}",
        f"- calibration set: {calibration.get('pairs')} pairs from {calibration.get('families_used')} of "
        f"{calibration.get('train_families')} training families",
    ]


def _baseline_line(metrics: dict) -> str:
    pixel = metrics.get("pixel_baseline_auc")
    if not isinstance(pixel, (int, float)):
        return "raw-pixel baseline: not measured by this run"
    comparison = BaselineComparison(metrics["best_val_auc"], pixel)
    line = comparison.sentence()
    return line if comparison.beats_baseline else f"**{line}**: this model is never promoted to champion"


def _engine_lines(manifest: EnginesManifest) -> list[str]:
    rows = engine_table(manifest)
    header = ("variant", "backend", "status", "size MB", "pairs/s", "p50 ms", "p99 ms", "AUC", "agreement", "note")
    reference = manifest.get("reference") or {}
    lines = [
        "## Engines", "",
        f"- backend: {manifest.get('backend_note')}; host `{manifest['host'].get('hostname')}` ({manifest['host'].get('role')})",
        f"- FP32 reference AUC {_format(reference.get('auc'), '.4f')} on {(manifest.get('validation') or {}).get('pairs')} "
        f"validation pairs; figures at batch {manifest.get('reference_batch')}", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [row[c] if row[c] is not None else "-" for c in TABLE_COLUMNS]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return lines


def render(run_id: str, train_manifest: TrainManifest, engines_manifest: EnginesManifest, promotion: dict,
           link_list: list[dict]) -> str:
    """The final report as markdown."""
    verdict = "promoted to champion" if promotion.get("promoted") else "not promoted"
    lines = [f"# kinship run {run_id}", "", f"**Champion:** {verdict}: {promotion.get('reason')}", ""]
    lines += _training_lines(train_manifest) + [""] + _engine_lines(engines_manifest)
    lines += ["", "## Artifacts", ""] + [f"- {item['name']}: `{item['uri']}`" for item in link_list]
    return "\n".join(lines) + "\n"


def summary_key(run_id: str) -> str:
    """Where a run's ``summary.json`` lives (it names the report and every figure of the table)."""
    return join_key("runs", run_id, "summary.json")


def publish_run_report(store: ArtifactStore, run_id: str, train_manifest: TrainManifest, engines_manifest: EnginesManifest,
                       promotion: dict) -> dict:
    """Write ``runs/<id>/report.md``, then ``summary.json``; return refs, markdown, table rows and links."""
    key = join_key("runs", run_id, "report.md")
    link_list = links(train_manifest, engines_manifest, promotion, store.uri(key))
    markdown = render(run_id, train_manifest, engines_manifest, promotion, link_list)
    table = engine_table(engines_manifest)
    refs = {"report.md": _put_text(store, markdown, key)}
    summary = {
        "run_id": run_id, "val_auc": train_manifest["metrics"].get("best_val_auc"), "report": refs["report.md"],
        "promoted": promotion.get("promoted"), "reason": promotion.get("reason"), "engines": table, "links": link_list,
        "train_manifest": train_manifest["manifest"], "engines_manifest": engines_manifest["manifest"],
    }
    refs["summary.json"] = store.put_json(summary, summary_key(run_id)).to_dict()
    return {"artifacts": refs, "markdown": markdown, "table": table, "links": link_list}


def _put_text(store: ArtifactStore, text: str, key: str) -> dict:
    """Store a text file through the store's verified upload (a temporary local file, then ``put_file``)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(key).name
        path.write_text(text)
        return store.put_file(path, key).to_dict()
