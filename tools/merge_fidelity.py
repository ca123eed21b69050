#!/usr/bin/env python
"""Merge the tables of several tools/compare_official.py runs (e.g. one process per bit width and seed) into one.

    python tools/merge_fidelity.py RUN_DIR [RUN_DIR ...] --out DIR

Each RUN_DIR holds a fidelity.json. Rows of the same (model, method, our recipe, bit widths) are combined: their
per-seed results are pooled (a seed given twice is an error), the means and sample standard deviations recomputed and
the commands kept as a list. Writes DIR/fidelity.json and one Markdown table per model in DIR/fidelity.md.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def merge(rows):
    merged = {}
    for r in rows:
        key = (r["model"], r["method"], r.get("ours_recipe", r["method"]), r["w_bits"], r["a_bits"])
        m = merged.setdefault(key, dict(r, seeds=[], official_runs=[], ours_runs=[], commands=[], _t_official=[], _t_ours=[]))
        clash = set(m["seeds"]) & set(r["seeds"])
        if clash:
            raise ValueError(f"{key}: seed(s) {sorted(clash)} appear in two runs")
        m["seeds"] += r["seeds"]
        m["official_runs"] += r["official_runs"]
        m["ours_runs"] += r["ours_runs"]
        cmds = r.get("commands") or [r.get("command")]
        m["commands"] += [c for c in cmds if c]
        for side in ("official", "ours"):  # a row recovered from a log has no times
            if r.get(f"calib_s_{side}") is not None:
                m[f"_t_{side}"] += [r[f"calib_s_{side}"]] * len(r["seeds"])
    out = []
    for m in merged.values():
        order = sorted(range(len(m["seeds"])), key=lambda i: m["seeds"][i])
        for k in ("seeds", "official_runs", "ours_runs"):
            m[k] = [m[k][i] for i in order]
        for side, runs in (("official", m["official_runs"]), ("ours", m["ours_runs"])):
            m[side] = statistics.mean(runs)
            m[f"{side}_std"] = statistics.stdev(runs) if len(runs) > 1 else 0.0
        for side in ("official", "ours"):
            times = m.pop(f"_t_{side}")
            m[f"calib_s_{side}"] = statistics.mean(times) if times else None
        m["command"] = "\n".join(m["commands"])  # one per line: the runs whose seeds were pooled
        out.append(m)
    return sorted(out, key=lambda m: (m["model"], m["method"], -m["w_bits"]))


def main(argv=None):
    from compare_official import markdown
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        path = os.path.join(run, "fidelity.json")
        if not os.path.isfile(path):
            print(f"error: no fidelity.json in {run}", file=sys.stderr)
            return 2
        rows += json.load(open(path))
    try:
        merged = merge(rows)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from plugin.quant.io import write_json, write_text
    write_json(os.path.join(args.out, "fidelity.json"), merged)
    models = list(dict.fromkeys(r["model"] for r in merged))
    write_text(os.path.join(args.out, "fidelity.md"), "\n".join(
        markdown([r for r in merged if r["model"] == m], next(r["fp"] for r in merged if r["model"] == m), m)
        for m in models))
    print(f"wrote {args.out}/fidelity.json and fidelity.md ({len(merged)} rows)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
