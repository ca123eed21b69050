"""The run's report: report.json (the job, the float metrics, one entry per method and bit widths) and report.md,
the same numbers as Markdown tables."""
import os

from ..quant.io import write_json, write_text


def agreement_cells(agreement):
    """(agreement measures, changes with their intervals) of one result's `agreement` as Markdown cell text; a
    change whose 95 % interval holds 0 is marked (tie); an undefined measure (None) reads n/a."""
    scalars = ", ".join(f"{k} {'n/a' if v is None else format(v, '.4g')}" for k, v in agreement.items()
                        if not isinstance(v, dict))
    changes = []
    for k, c in agreement.items():
        if isinstance(c, dict):
            ci = "[n/a]" if c.get("ci95") is None else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
            changes.append(f"{k} {c['diff']:+.2f} {ci}{' (tie)' if c.get('tie') else ''}")
    return scalars, ", ".join(changes)


def markdown_report(report):
    metrics = report["fp"] if report.get("fp") else report["results"][0]["metrics"]
    metric_names = [k for k in metrics if not k.startswith("num_")]  # counts (num_images, num_shapes) are no metric
    head = "| method | W/A | " + " | ".join(metric_names) + " | calib time (s) |"
    lines = [f"# PTQ report: {os.path.basename(report['config'])}", "",
             f"checkpoint `{report['checkpoint']}`, task {report['task']}, device {report['device']}, "
             f"seed {report['seed']}", "", head, "|" + "---|" * (len(metric_names) + 3)]
    if report.get("fp"):
        lines.append("| full precision | 32/32 | " + " | ".join(f"{report['fp'][k]:.2f}" for k in metric_names)
                     + " | - |")
    for r in report["results"]:
        lines.append(f"| {r['method']} | {r['w_bits']}/{r['a_bits']}{' (weight-only)' * bool(r.get('weight_only'))} | "
                     + " | ".join(f"{r['metrics'][k]:.2f}" for k in metric_names)
                     + f" | {r['calib_time_s']:.1f} |")
        if r.get("float_relu"):  # APHQ-ViT changes the float network (ReLU MLPs): its own float metric
            lines.append(f"| {r['method']} float network (ReLU MLPs, unquantized) | 32/32 | "
                         + " | ".join(f"{r['float_relu'][k]:.2f}" for k in metric_names) + " | - |")
        if r.get("onnx"):
            o = r["onnx"]
            lines.append(f"| {r['method']} (ONNX Runtime, QDQ, {o['bytes'] / 2 ** 20:.2f} MiB = "
                         f"{o['size_ratio']:.2f}x FP32 export) | {r['w_bits']}/{r['a_bits']} | "
                         + " | ".join(f"{o['metrics'][k]:.2f}" for k in metric_names) + " | - |")
        if r.get("int8"):
            lines.append(f"| {r['method']} (integer path, {r['int8']['frozen_layers']} layers) | "
                         f"{r['w_bits']}/{r['a_bits']} | "
                         + " | ".join(f"{r['int8']['metrics'][k]:.2f}" for k in metric_names) + " | - |")
    agreements = [r for r in report["results"] if r.get("agreement")]
    if agreements:
        lines += ["", "Agreement with the full-precision model (changes: paired bootstrap over the evaluation samples, "
                  "95 % interval; a tie when it holds 0):", "",
                  "| method | W/A | agreement | change vs full precision (points) |", "|---|---|---|---|"]
        for r in agreements:
            scalars, changes = agreement_cells(r["agreement"])
            lines.append(f"| {r['method']} | {r['w_bits']}/{r['a_bits']} | {scalars} | {changes} |")
    elif report.get("agreement_unavailable"):
        lines += ["", f"Agreement with the full-precision model: unavailable ({report['agreement_unavailable']})."]
    onnx_rows = [r for r in report["results"] if r.get("onnx")]
    for r in onnx_rows:
        sites = r["onnx"]["float_sites"]
        lines += ["", f"ONNX {r['method']} W{r['w_bits']}A{r['a_bits']}: `{r['onnx']['path']}`, "
                  f"{r['onnx']['qdq_activations']} activation Q/DQ pairs, {r['onnx']['int8_weights']} int8 weights, "
                  f"{len(sites)} sites without Q/DQ" + (":" if sites else "")]
        lines += [f"- `{name}`: {why}" for name, why in sites.items()]
    for r in report["results"]:
        if r.get("saved_model_bytes") is not None:
            lines += ["", _saved_model(r)]
            lines += [f"- `{name}`: {why}" for name, why in r["saved_float_weights"].items()]
    if report["results"]:
        lines += ["", "calibration: " + "; ".join(_calibration(r) for r in report["results"]) + "."]
    if any(r.get("weight_only") for r in report["results"]):
        lines += ["", "weight-only: the activations stay in float (reported as A16)."]
    return "\n".join(lines) + "\n"


def write_reports(report, out_dir):
    write_json(os.path.join(out_dir, "report.json"), report)
    write_text(os.path.join(out_dir, "report.md"), markdown_report(report))


def _saved_model(r):
    """'Saved model `<path>`: 0.09 MiB (float weights: 0.46 MiB, 5.4x smaller); 10 weights as packed integer codes,
    0 kept float' for one result saved with --save-model."""
    size, float_size = r["saved_model_bytes"], r["saved_model_float_bytes"]
    n_float = len(r["saved_float_weights"])
    mib = 2 ** 20
    return (f"Saved model `{r['saved_model']}`: {size / mib:.2f} MiB (float weights: {float_size / mib:.2f} MiB, "
            f"{float_size / size:.1f}x smaller); {r['saved_packed_weights']} weights as packed integer codes, "
            f"{n_float} kept float" + (":" if n_float else ""))


def _calibration(r):
    """'<method> W4A4: 32 samples (task default), sos 250 iterations batch 32' for one result."""
    recon = "".join(f", {p['kind']} {p['iters']} iterations batch {p['batch_used']}" for p in r.get("recon", ()))
    return (f"{r['method']} W{r['w_bits']}A{r['a_bits']}: {r['calib_num']} samples "
            f"({r.get('calib_source', 'not recorded')}){recon}")


__all__ = ["agreement_cells", "markdown_report", "write_reports"]
