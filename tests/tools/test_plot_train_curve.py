"""tools/plot_train_curve.py: an mmengine scalars.json (training losses per iteration, validation mAP per epoch) to a
PNG and JSON; a file that is not one is one error line and no output."""
import json
import math
import sys

import pytest

from repo_paths import TOOLS  # noqa: E402
sys.path.insert(0, TOOLS)
import plot_train_curve  # noqa: E402

pytest.importorskip("matplotlib")


def _scalars(path):
    rows = [{"lr": 1e-4, "loss": 9.0 - i, "loss_cls": 0.7, "grad_norm": math.nan, "epoch": 1, "iter": 10 * i,
             "step": 10 * i} for i in range(1, 4)]
    rows.append({"coco/bbox_mAP": 0.062, "coco/segm_mAP": 0.025, "data_time": 0.01, "step": 6})
    rows.append({"coco/bbox_mAP": 0.161, "coco/segm_mAP": 0.109, "step": 12})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # NaN as mmengine writes it
    return path


def test_losses_and_validation_map_plotted(tmp_path, capsys):
    out, js = tmp_path / "curve.png", tmp_path / "curve.json"
    assert plot_train_curve.main([str(_scalars(tmp_path / "scalars.json")), "--out", str(out), "--json", str(js)]) == 0
    assert out.stat().st_size > 0
    data = json.loads(js.read_text())
    assert data["train"]["loss"] == [[10, 8.0], [20, 7.0], [30, 6.0]] and "grad_norm" not in data["train"]
    assert data["val"]["bbox_mAP"] == [[6, pytest.approx(6.2)], [12, pytest.approx(16.1)]]
    assert "bbox_mAP': 16.1" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["{not json\n", '{"lr": 0.1, "step": 1}\n'])
def test_not_a_scalars_log_is_one_error(tmp_path, capsys, text):
    bad = tmp_path / "scalars.json"
    bad.write_text(text)
    assert plot_train_curve.main([str(bad), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert ": error: " in err and err.count("\n") == 1 and not (tmp_path / "c.png").exists()
