#!/usr/bin/env python
"""Turn ptq_test.py reports into a results page: one Markdown table per report and a bits-vs-metric plot.

    python tools/make_results.py RUN_DIR [RUN_DIR ...] --out docs/results --title "CIFAR-10 reference models"

Each RUN_DIR holds a report.json written by tools/ptq_test.py (and, optionally, command.txt with the command that
produced it, shown beside the table). Writes OUT/results.md, OUT/results.json (the reports, merged) and
OUT/<name>_bits.png. Runs of one config with different `--seed` values are merged into one cell per method and bit
width: the mean ± sample standard deviation over the seeds, with the number of seeds when there are several.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        lines.append(f"| full precision | " + " | ".join(fmt(fp) for _ in bits) + " | - |")
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="Results")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    merged, parts = {}, [f"# {args.title}", ""]
    for run in args.runs:  # first pass: merge
        path = os.path.join(run, "report.json")
        if not os.path.isfile(path):
            print(f"error: no report.json in {run}", file=sys.stderr)
            return 2
        report = json.load(open(path))
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
    for name, report in merged.items():
        png = f"{name}_bits.png"
        plot(report, os.path.join(args.out, png))
        parts += [f"## {name} ({report['primary_metric']}, device {report['device']})", ""]
        commands = [c for c in report["commands"] if c]
        if commands:
            parts += ["Produced by:", "", "```bash", *commands, "```", ""]
        parts += [table(report), "", f"![{name}]({png})", ""]
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(merged, f, indent=2, sort_keys=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
