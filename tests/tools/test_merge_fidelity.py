"""tools/merge_fidelity.py: per-seed compare_official runs pool into one row per (model, method, bits)."""
import json
import sys

import pytest

from repo_paths import TOOLS  # noqa: E402
sys.path.insert(0, TOOLS)
import merge_fidelity  # noqa: E402


def _run(tmp_path, name, bits, seeds, official, ours, t=(10.0, 1.0), peak=None):
    d = tmp_path / name
    d.mkdir()
    row = {"model": "m", "method": "repq", "ours_recipe": "repq", "w_bits": bits, "a_bits": bits, "fp": 90.0,
           "official": None, "official_std": None, "official_runs": official,  # recomputed by the merge
           "ours": None, "ours_std": None, "ours_runs": ours, "seeds": seeds,
           "calib_s_official": t[0], "calib_s_ours": t[1], "command": f"cmd {name}"}
    for side, gib in (peak or {}).items():  # CUDA runs carry each measured side's peak memory
        row[f"calib_peak_gib_{side}"] = gib
    (d / "fidelity.json").write_text(json.dumps([row]))
    return str(d)


def test_seeds_pool_into_one_row(tmp_path):
    runs = [_run(tmp_path, "a", 3, [2], [74.0], [75.0], t=(None, None)),  # a row recovered from a log: no times
            _run(tmp_path, "b", 3, [0, 1], [70.0, 72.0], [71.0, 73.0]), _run(tmp_path, "c", 4, [0], [80.0], [80.5])]
    assert merge_fidelity.main(runs + ["--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    w3 = next(r for r in rows if r["w_bits"] == 3)
    assert w3["seeds"] == [0, 1, 2] and w3["official_runs"] == [70.0, 72.0, 74.0]
    assert w3["official"] == pytest.approx(72.0) and w3["official_std"] == pytest.approx(2.0)
    assert w3["ours"] == pytest.approx(73.0)
    assert w3["calib_s_official"] == pytest.approx(10.0)  # only runs with times count
    assert w3["commands"] == ["cmd a", "cmd b"]
    md = (tmp_path / "out" / "fidelity.md").read_text()
    assert "| repq | 3/3 | 72.00 ± 2.00 | 73.00 ± 2.00 | +1.00 | 0, 1, 2 |" in md


def test_a_seed_in_two_runs_is_an_error(tmp_path, capsys):
    runs = [_run(tmp_path, "a", 3, [0], [70.0], [71.0]), _run(tmp_path, "b", 3, [0], [70.0], [71.0])]
    assert merge_fidelity.main(runs + ["--out", str(tmp_path / "out")]) == 2
    assert "seed" in capsys.readouterr().err
    assert not (tmp_path / "out" / "fidelity.json").exists()


def test_one_sided_runs_join(tmp_path):
    off = _run(tmp_path, "off", 3, [0, 1], [70.0, 72.0], [None, None], t=(50.0, None))
    ours = _run(tmp_path, "ours", 3, [0, 1], [None, None], [71.0, 74.0], t=(None, 1.0))
    only_ours = _run(tmp_path, "s2", 3, [2], [None], [75.0], t=(None, 2.0))
    assert merge_fidelity.main([off, ours, only_ours, "--out", str(tmp_path / "out")]) == 0
    row = json.loads((tmp_path / "out" / "fidelity.json").read_text())[0]
    assert row["seeds"] == [0, 1, 2] and row["official_runs"] == [70.0, 72.0, None]
    assert row["official"] == pytest.approx(71.0) and row["ours"] == pytest.approx(73.333, abs=1e-3)
    assert row["calib_s_official"] == pytest.approx(50.0) and row["calib_s_ours"] == pytest.approx(4 / 3)


def test_peak_memory_is_the_largest_of_the_pooled_runs(tmp_path):
    off = _run(tmp_path, "off", 3, [0], [70.0], [None], t=(50.0, None), peak={"official": 2.5})
    ours = _run(tmp_path, "ours", 3, [0], [None], [71.0], t=(None, 1.0), peak={"ours": 1.5})
    ours2 = _run(tmp_path, "ours2", 3, [1], [None], [72.0], t=(None, 1.0), peak={"ours": 1.75})
    cpu = _run(tmp_path, "cpu", 4, [0], [80.0], [80.5])
    assert merge_fidelity.main([ours, off, ours2, cpu, "--out", str(tmp_path / "out")]) == 0
    w3, w4 = sorted(json.loads((tmp_path / "out" / "fidelity.json").read_text()), key=lambda r: r["w_bits"])
    assert w3["calib_peak_gib_official"] == 2.5 and w3["calib_peak_gib_ours"] == 1.75
    assert not any(key.startswith("calib_peak_gib") for key in w4)
