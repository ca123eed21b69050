#!/usr/bin/env python
"""Merge the tables of several tools/compare_official.py runs (e.g. one process per bit width and seed) into one.

    python tools/merge_fidelity.py RUN_DIR [RUN_DIR ...] --out DIR

Each RUN_DIR holds a fidelity.json. Rows of the same (model, method, our recipe, bit widths) are combined: their
per-seed results are pooled side by side (a run with `--side official` or `--side ours` fills one half; a seed measured
twice on one side is an error), the means and sample standard deviations recomputed and the commands kept as a list. Writes DIR/fidelity.json and one Markdown table per model in DIR/fidelity.md.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugin.errors import ToolParser, UserInputError, tool_main  # noqa: E402


SIDES = ("official", "ours")


def merge(rows):
    """Pool rows of the same (model, method, recipe, bits) seed by seed and side by side: a run of one side only
    (`compare_official.py --side`) fills its half; a seed measured twice on the same side is an error."""
    merged = {}
    for r in rows:
        key = (r["model"], r["method"], r.get("ours_recipe", r["method"]), r["w_bits"], r["a_bits"])
        m = merged.setdefault(key, dict(r, per_seed={}, commands=[], times={side: [] for side in SIDES},
                                              peaks={side: [] for side in SIDES}))
        for side in SIDES:  # peak GPU memory (CUDA runs only): the largest over the pooled runs
            if r.get(f"calib_peak_gib_{side}") is not None:
                m["peaks"][side].append(r[f"calib_peak_gib_{side}"])
        for i, seed in enumerate(r["seeds"]):
            slot = m["per_seed"].setdefault(seed, {})
            for side in SIDES:
                value = r[f"{side}_runs"][i]
                if value is None:
                    continue
                if side in slot:
                    raise UserInputError(f"{key}: seed {seed} of the {side} code appears in two runs")
                slot[side] = value
                if r.get(f"calib_s_{side}") is not None:  # a row recovered from a log has no times
                    m["times"][side].append(r[f"calib_s_{side}"])
        m["commands"] += [c for c in (r.get("commands") or [r.get("command")]) if c]
    out = []
    for m in merged.values():
        per_seed, times, peaks = m.pop("per_seed"), m.pop("times"), m.pop("peaks")
        m["seeds"] = sorted(per_seed)
        for side in SIDES:
            runs = [per_seed[s].get(side) for s in m["seeds"]]
            measured = [v for v in runs if v is not None]
            m[f"{side}_runs"] = runs
            m[side] = statistics.mean(measured) if measured else None
            m[f"{side}_std"] = (statistics.stdev(measured) if len(measured) > 1 else 0.0) if measured else None
            m[f"calib_s_{side}"] = statistics.mean(times[side]) if times[side] else None
            m.pop(f"calib_peak_gib_{side}", None)
            if peaks[side]:
                m[f"calib_peak_gib_{side}"] = max(peaks[side])
        m["command"] = "\n".join(m["commands"])  # one per line: the runs whose seeds were pooled
        out.append(m)
    return sorted(out, key=lambda m: (m["model"], m["method"], -m["w_bits"]))


@tool_main
def main(argv=None):
    from compare_official import markdown
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        path = os.path.join(run, "fidelity.json")
        if not os.path.isfile(path):
            raise UserInputError(f"no fidelity.json in {run}")
        try:
            with open(path) as f:
                table = json.load(f)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not text
            raise UserInputError(f"{path} is not a JSON table ({exc})") from None
        if not isinstance(table, list) or not all(isinstance(r, dict) and "model" in r for r in table):
            raise UserInputError(f"{path} is not a tools/compare_official.py table (a list of rows with a model)")
        rows += table
    merged = merge(rows)
    from plugin.quant.io import write_json, write_text
    write_json(os.path.join(args.out, "fidelity.json"), merged)
    models = list(dict.fromkeys(r["model"] for r in merged))
    write_text(os.path.join(args.out, "fidelity.md"), "\n".join(
        markdown([r for r in merged if r["model"] == m], next(r["fp"] for r in merged if r["model"] == m), m)
        for m in models))
    print(f"wrote {args.out}/fidelity.json and fidelity.md ({len(merged)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
