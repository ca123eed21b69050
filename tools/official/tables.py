"""The fidelity table: per (method, bit width) the official and our top-1 over seeds, as Markdown and JSON."""
import os
import statistics


def mean_std(values):
    """Mean and sample std of the values measured (None: a side not run); (None, None) when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seconds(t):
    return "-" if t is None else f"{t:.1f}"


def value(v, std=None):
    if v is None:
        return "-"
    return f"{v:.2f}" if std is None else f"{v:.2f} ± {std:.2f}"


def markdown(rows, fp, model_name):
    lines = [f"# Official code vs ours: {model_name} (full precision top-1 {fp:.2f})", "",
             "| method | W/A | official | ours | ours − official | seeds | calib s (official / ours) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-" if r["official"] is None or r["ours"] is None else f"{r['ours'] - r['official']:+.2f}"
        recipe = r.get("ours_recipe", r["method"])
        method = r["method"] if recipe == r["method"] else f"{r['method']} (ours: `{recipe}`)"
        lines.append(f"| {method} | {r['w_bits']}/{r['a_bits']} | {value(r['official'], r['official_std'])} | "
                     f"{value(r['ours'], r['ours_std'])} | {diff} | "
                     f"{', '.join(map(str, r['seeds']))} | {seconds(r['calib_s_official'])} / "
                     f"{seconds(r['calib_s_ours'])} |")
    return "\n".join(lines) + "\n"


def write_tables(out, rows, fp):
    from plugin.quant.io import write_json, write_text
    write_json(os.path.join(out, "fidelity.json"), rows)
    write_text(os.path.join(out, "fidelity.md"), markdown(rows, fp, rows[0]["model"]))
