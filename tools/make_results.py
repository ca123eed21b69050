#!/usr/bin/env python
"""Turn ptq_test.py reports into a results page: one Markdown table per report and a bits-vs-metric plot.

    python tools/make_results.py RUN_DIR [RUN_DIR ...] --out docs/results --title "CIFAR-10 reference models"

Each RUN_DIR holds a report.json written by tools/ptq_test.py (and, optionally, command.txt with the command that
produced it, shown beside the table). Writes OUT/results.md, OUT/results.json (the reports, merged) and
OUT/<name>_bits.png. Runs of one config with different `--seed` values are merged into one cell per method and bit
width: the mean ± sample standard deviation over the seeds, with the number of seeds when there are several. Reports
with `agreement` (tools/ptq_test.py) also get an agreement table: one row per run, ranked by agreement with the float
model (the task metric's own agreement measure, e.g. bbox_mAP_agreement), each change of the task metric with its
paired-bootstrap 95 % interval and (tie) where the interval holds 0; where a method has several seeds, a summary
table before it gives each method's agreement as mean ± std over the seeds, ranked the same way.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, UserInputError, tool_main  # noqa: E402


# Metrics shown together in one cell, after the primary one (detection: box and mask mAP).
COMPANIONS = {"bbox_mAP": ["segm_mAP"]}


def table(report):
    metric = report["primary_metric"]
    fp = report.get("fp") or {}
    shown = [metric] + [m for m in COMPANIONS.get(metric, []) if m in fp]
    fmt = lambda values: " / ".join(f"{values[m]:.2f}" for m in shown)  # noqa: E731
    methods = list(dict.fromkeys(r["method"] for r in report["results"]))
    bits = sorted({(r["w_bits"], r["a_bits"]) for r in report["results"]})
    cells = {}
    for r in report["results"]:  # a (method, bits, seed) run twice counts once: the last one
        runs = cells.setdefault((r["method"], r["w_bits"], r["a_bits"]), {})
        runs[r.get("seed", 0)] = r
    cells = {k: list(v.values()) for k, v in cells.items()}
    label = f" ({' / '.join(shown)})" if len(shown) > 1 else ""
    head = "| method | " + " | ".join(f"W{w}A{a}{label}" for w, a in bits) + " | calib time (s) |"
    lines = [head, "|" + "---|" * (len(bits) + 2)]
    if fp:
        lines.append("| full precision | " + " | ".join(fmt(fp) for _ in bits) + " | - |")
    for m in methods:
        vals, times = [], []
        for w, a in bits:
            runs = cells.get((m, w, a))
            if not runs:
                vals.append("-")
                continue
            vals.append(" / ".join(seed_cell([r["metrics"][k] for r in runs]) for k in shown))
            times.append(f"{statistics.mean(r['calib_time_s'] for r in runs):.1f}")
        lines.append(f"| {m} | " + " | ".join(vals) + f" | {' / '.join(times)} |")
    return "\n".join(lines)


def agreement_table(report):
    """Agreement with the float model, one row per run (method, bits, seed), ranked within each bit width by the
    first `*_agreement` measure (higher first). Changes of the task metric show the paired-bootstrap 95 % interval,
    marked (tie) when it holds 0. A measure equal in every row (a setting such as detection's float_score_thr) is
    named once above the table instead of a column. None when no run has agreement."""
    runs = [r for r in report["results"] if r.get("agreement")]
    if not runs:
        return None
    scalars, changes = agreement_columns(runs)
    constant = [k for k in scalars if len({json.dumps(r["agreement"].get(k)) for r in runs}) == 1 and len(runs) > 1]
    scalars = [k for k in scalars if k not in constant]
    rank = agreement_rank_key(report["primary_metric"], scalars)

    def order(r):
        value = r["agreement"].get(rank) if rank else None
        return (r["w_bits"], r["a_bits"], value is None, -(value or 0.0))
    lines = ["Agreement with the full-precision model" + (f", ranked by {rank}" if rank else "")
             + "; changes vs full precision in points with their paired-bootstrap 95 % interval over the evaluation "
             "samples, (tie) when it holds 0" + "".join(f"; {k} {runs[0]['agreement'][k]} in every row"
                                                        for k in constant) + ":", "",
             "| method | W/A | seed | " + " | ".join(scalars + changes) + " |",
             "|" + "---|" * (3 + len(scalars) + len(changes))]
    for r in sorted(runs, key=order):
        a = r["agreement"]
        cells = ["-" if a.get(k) is None else f"{a[k]:.4g}" if isinstance(a[k], (int, float)) else str(a[k])
                 for k in scalars]
        for k in changes:
            c = a.get(k)
            if not c:
                cells.append("-")
            elif c.get("ci95") is None:
                cells.append(f"{c['diff']:+.2f}")
            else:
                cells.append(f"{c['diff']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
                             + (" (tie)" if c.get("tie") else ""))
        lines.append(f"| {r['method']} | W{r['w_bits']}A{r['a_bits']} | {r.get('seed', 0)} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def agreement_columns(runs):
    """The `agreement` keys of these runs in first-seen order, split into scalar measures and task-metric changes
    (dicts with diff and interval)."""
    keys = list(dict.fromkeys(k for r in runs for k in r["agreement"]))
    changes = [k for k in keys if any(isinstance(r["agreement"].get(k), dict) for r in runs)]
    return [k for k in keys if k not in changes], changes


def agreement_rank_key(metric, scalars):
    """The agreement measure tables rank by: the task metric's own (bbox_mAP -> bbox_mAP_agreement), else the first
    `*_agreement` measure, else the first measure."""
    own = next((k for k in scalars if k.lower() == f"{metric}_agreement".lower()), None)
    return own or next((k for k in scalars if k.endswith("_agreement")), scalars[0] if scalars else None)


def agreement_summary(report):
    """Agreement per method and width over its seeds (mean ± sample std (n)), ranked within each width by the same
    measure as agreement_table, with how many seeds' task-metric changes are ties. None unless some method and
    width has several seeds."""
    runs = [r for r in report["results"] if r.get("agreement")]
    groups = {}
    for r in runs:
        groups.setdefault((r["w_bits"], r["a_bits"], r["method"]), {})[r.get("seed", 0)] = r
    if not any(len(g) > 1 for g in groups.values()):
        return None
    scalars, changes = agreement_columns(runs)
    scalars = [k for k in scalars if k.endswith("_agreement")]
    rank = agreement_rank_key(report["primary_metric"], scalars)

    def values(group, k):
        return [r["agreement"][k] for r in group.values() if isinstance(r["agreement"].get(k), (int, float))]

    def order(item):
        (w, a, _), group = item
        v = values(group, rank) if rank else []
        return (w, a, not v, -(statistics.mean(v) if v else 0.0))
    lines = ["Per method and width over its seeds (mean ± sample std (n)), ranked by the mean "
             + (rank or "agreement") + "; a change column counts the seeds whose 95 % interval holds 0 (ties):", "",
             "| method | W/A | " + " | ".join(scalars + changes) + " |",
             "|" + "---|" * (2 + len(scalars) + len(changes))]
    for (w, a, m), group in sorted(groups.items(), key=order):
        cells = [seed_cell(values(group, k)) if values(group, k) else "-" for k in scalars]
        for k in changes:
            cs = [r["agreement"][k] for r in group.values() if isinstance(r["agreement"].get(k), dict)]
            cells.append(f"{seed_cell([c['diff'] for c in cs])}, ties {sum(bool(c.get('tie')) for c in cs)}/{len(cs)}"
                         if cs else "-")
        lines.append(f"| {m} | W{w}A{a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_cell(values):
    """One value as it is; several (one per seed) as mean ± sample std (n)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metric = report["primary_metric"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in dict.fromkeys(r["method"] for r in report["results"]):
        by_bits = {}
        for r in report["results"]:
            if r["method"] == m and r["w_bits"] == r["a_bits"]:
                by_bits.setdefault(r["a_bits"], []).append(r["metrics"][metric])
        pts = sorted((b, statistics.mean(v)) for b, v in by_bits.items())
        if len(pts) > 1:  # single-width rows (ablations) stay in the table only
            ax.plot(*zip(*pts), marker="o", label=m)
    ax.set_xticks(sorted({r["a_bits"] for r in report["results"]}))
    if report.get("fp"):
        ax.axhline(report["fp"][metric], color="k", ls="--", lw=1, label="full precision")
    ax.set_xlabel("bits (W = A)")
    ax.set_ylabel(metric)
    ax.set_title(os.path.basename(report["config"]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_report(path):
    """A ptq_test report, or one line saying why the file is not one."""
    try:
        with open(path) as f:
            report = json.load(f)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not text
        raise UserInputError(f"{path} is not a JSON report ({exc})") from None
    if not isinstance(report, dict) or not {"config", "results", "primary_metric"} <= set(report):
        raise UserInputError(f"{path} is not a tools/ptq_test.py report (no config, results, primary_metric)")
    return report


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="Results")
    args = p.parse_args(argv)
    merged, parts = {}, [f"# {args.title}", ""]
    for run in args.runs:  # first pass: merge
        path = os.path.join(run, "report.json")
        if not os.path.isfile(path):
            raise UserInputError(f"no report.json in {run}")
        report = read_report(path)
        for r in report["results"]:
            r.setdefault("seed", report.get("seed", 0))
        cmd = os.path.join(run, "command.txt")
        report["command"] = open(cmd).read().strip() if os.path.isfile(cmd) else report.get("command")
        name = os.path.splitext(os.path.basename(report["config"]))[0]
        if name in merged:  # several runs of one config (e.g. baselines and seed methods): one table
            merged[name]["results"] += report["results"]
            merged[name]["fp"] = merged[name].get("fp") or report.get("fp")  # runs with --no-fp have none
            merged[name].setdefault("commands", []).append(report.get("command"))
            continue
        report["commands"] = [report.get("command")]
        merged[name] = report
    os.makedirs(args.out, exist_ok=True)  # only once every report has been read: a refused run leaves no folder
    for name, report in merged.items():
        png = f"{name}_bits.png"
        plot(report, os.path.join(args.out, png))
        parts += [f"## {name} ({report['primary_metric']}, device {report['device']})", ""]
        commands = [c for c in report["commands"] if c]
        if commands:
            parts += ["Produced by:", "", "```bash", *commands, "```", ""]
        parts += [table(report), ""]
        for extra in (agreement_summary(report), agreement_table(report)):
            if extra:
                parts += [extra, ""]
        parts += [f"![{name}]({png})", ""]
    from plugin.quant.io import write_json, write_text  # atomic: a full disk leaves the old page, not half a new one
    write_json(os.path.join(args.out, "results.json"), merged)
    write_text(os.path.join(args.out, "results.md"), "\n".join(parts))
    print(f"wrote {args.out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
