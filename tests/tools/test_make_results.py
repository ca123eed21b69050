"""tools/make_results.py: reports of several runs of one config merge into one table (and one plot); detection
tables show mask mAP beside box mAP; a run without a report is an error."""
import json
import os
import sys

import pytest

from repo_paths import TOOLS  # noqa: E402
sys.path.insert(0, TOOLS)
import make_results  # noqa: E402

pytest.importorskip("matplotlib")


def _run(tmp_path, name, config, metric, fp, rows, command="python tools/ptq_test.py ...", seed=0):
    d = tmp_path / name
    d.mkdir()
    results = [{"method": m, "w_bits": b, "a_bits": b, "calib_time_s": t, "metrics": v} for m, b, v, t in rows]
    report = {"config": f"configs/{config}.py", "primary_metric": metric, "fp": fp, "device": "cpu",
              "results": results, "seed": seed}
    (d / "report.json").write_text(json.dumps(report))
    (d / "command.txt").write_text(command + f" --out {name}\n")
    return str(d)


def test_runs_of_one_config_merge(tmp_path):
    a = _run(tmp_path, "base", "vit", "top1", {"top1": 90.0}, [("repq", 4, {"top1": 80.123}, 1.0),
                                                               ("repq", 6, {"top1": 89.5}, 1.5)])
    b = _run(tmp_path, "seed", "vit", "top1", {"top1": 90.0}, [("isvit", 4, {"top1": 85.0}, 60.0)])
    assert make_results.main([a, b, "--out", str(tmp_path / "page")]) == 0
    md = (tmp_path / "page" / "results.md").read_text()
    assert "| method | W4A4 | W6A6 | calib time (s) |" in md
    assert "| full precision | 90.00 | 90.00 | - |" in md
    assert "| repq | 80.12 | 89.50 | 1.0 / 1.5 |" in md
    assert "| isvit | 85.00 | - | 60.0 |" in md
    assert md.count("--out base") == 1 and md.count("--out seed") == 1
    merged = json.loads((tmp_path / "page" / "results.json").read_text())
    assert [r["method"] for r in merged["vit"]["results"]] == ["repq", "repq", "isvit"]
    assert (tmp_path / "page" / "vit_bits.png").is_file()


def test_detection_shows_mask_beside_box(tmp_path):
    fp = {"bbox_mAP": 8.6, "segm_mAP": 5.1}
    a = _run(tmp_path, "det", "det", "bbox_mAP", fp, [("repq", 4, {"bbox_mAP": 8.9, "segm_mAP": 4.9}, 3.5)])
    assert make_results.main([a, "--out", str(tmp_path / "page")]) == 0
    md = (tmp_path / "page" / "results.md").read_text()
    assert "| method | W4A4 (bbox_mAP / segm_mAP) | calib time (s) |" in md
    assert "| full precision | 8.60 / 5.10 | - |" in md
    assert "| repq | 8.90 / 4.90 | 3.5 |" in md


def test_missing_report_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert make_results.main([str(tmp_path / "empty"), "--out", str(tmp_path / "page")]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_seeds_merge_into_mean_and_std(tmp_path):
    runs = [_run(tmp_path, f"s{i}", "vit", "top1", {"top1": 90.0}, [("repq", 3, {"top1": v}, 2.0)], seed=i)
            for i, v in enumerate((70.0, 72.0, 74.0))]
    assert make_results.main(runs + ["--out", str(tmp_path / "page")]) == 0
    md = (tmp_path / "page" / "results.md").read_text()
    assert "| repq | 72.00 ± 2.00 (3) | 2.0 |" in md


def test_a_seed_run_twice_counts_once(tmp_path):
    runs = [_run(tmp_path, f"r{i}", "vit", "top1", {"top1": 90.0}, [("repq", 3, {"top1": 70.0}, 2.0)]) for i in (0, 1)]
    assert make_results.main(runs + ["--out", str(tmp_path / "page")]) == 0
    assert "| repq | 70.00 | 2.0 |" in (tmp_path / "page" / "results.md").read_text()


def test_agreement_table_ranks_runs_and_marks_ties(tmp_path):
    fp = {"bbox_mAP": 8.6, "segm_mAP": 5.1}

    def change(diff, lo, hi):
        return {"diff": diff, "ci95": [lo, hi], "tie": lo <= 0 <= hi, "resamples": 1000}
    a = _run(tmp_path, "det", "det", "bbox_mAP", fp, [("repq", 4, {"bbox_mAP": 8.9, "segm_mAP": 4.9}, 3.5),
                                                      ("minmax", 4, {"bbox_mAP": 7.0, "segm_mAP": 4.0}, 0.8)])
    report = json.loads(open(os.path.join(a, "report.json")).read())
    report["results"][0]["agreement"] = {"float_score_thr": 0.3, "bbox_mAP_agreement": 61.0,
                                         "segm_mAP_agreement": None, "bbox_mAP_change": change(0.3, -0.4, 1.0)}
    report["results"][1]["agreement"] = {"float_score_thr": 0.3, "bbox_mAP_agreement": 75.5,
                                         "segm_mAP_agreement": 50.0, "bbox_mAP_change": change(-1.6, -2.5, -0.7)}
    open(os.path.join(a, "report.json"), "w").write(json.dumps(report))
    assert make_results.main([a, "--out", str(tmp_path / "page")]) == 0
    md = (tmp_path / "page" / "results.md").read_text()
    assert "ranked by bbox_mAP_agreement" in md and "float_score_thr 0.3 in every row" in md
    assert "| method | W/A | seed | bbox_mAP_agreement | segm_mAP_agreement | bbox_mAP_change |" in md
    minmax = md.index("| minmax | W4A4 | 0 | 75.5 | 50 | -1.60 [-2.50, -0.70] |")
    repq = md.index("| repq | W4A4 | 0 | 61 | - | +0.30 [-0.40, +1.00] (tie) |")
    assert minmax < repq  # higher agreement first


def test_agreement_summary_over_seeds_ranked_by_the_task_metrics_own_measure(tmp_path):
    """Seeds of a method merge into mean ± std in a summary table; the rank follows bbox_mAP_agreement (the primary
    metric's own measure) even where another *_agreement measure comes first in the reports."""
    fp = {"bbox_mAP": 16.0, "segm_mAP": 10.9}

    def change(diff, lo, hi):
        return {"diff": diff, "ci95": [lo, hi], "tie": lo <= 0 <= hi, "resamples": 1000}
    runs = []
    for seed, (m, ap50, ap, ch) in enumerate([("repq", 95.0, 60.0, change(-0.5, -1.0, 0.2)),
                                              ("repq", 93.0, 62.0, change(-1.5, -2.0, -0.3)),
                                              ("minmax", 80.0, 70.0, change(-2.0, -3.0, -1.0))]):
        d = _run(tmp_path, f"r{seed}", "det", "bbox_mAP", fp, [(m, 4, {"bbox_mAP": 15.0, "segm_mAP": 10.0}, 1.0)],
                 seed=seed)
        report = json.loads(open(os.path.join(d, "report.json")).read())
        report["results"][0]["agreement"] = {"bbox_mAP_50_agreement": ap50, "bbox_mAP_agreement": ap,
                                             "bbox_mAP_change": ch}
        open(os.path.join(d, "report.json"), "w").write(json.dumps(report))
        runs.append(d)
    assert make_results.main(runs + ["--out", str(tmp_path / "page")]) == 0
    md = (tmp_path / "page" / "results.md").read_text()
    assert "ranked by the mean bbox_mAP_agreement" in md
    minmax = md.index("| minmax | W4A4 | 80.00 | 70.00 | -2.00, ties 0/1 |")
    repq = md.index("| repq | W4A4 | 94.00 ± 1.41 (2) | 61.00 ± 1.41 (2) | -1.00 ± 0.71 (2), ties 1/2 |")
    assert minmax < repq < md.index("| minmax | W4A4 | 2 | 80 | 70 |")  # summary first, then one row per run


def test_no_agreement_no_table(tmp_path):
    a = _run(tmp_path, "base", "vit", "top1", {"top1": 90.0}, [("repq", 4, {"top1": 80.0}, 1.0)])
    assert make_results.main([a, "--out", str(tmp_path / "page")]) == 0
    assert "Agreement" not in (tmp_path / "page" / "results.md").read_text()
