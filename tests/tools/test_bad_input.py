"""Every tool answers bad input alike: exit code 2, exactly one line on stderr (`<tool>: error: …`, argparse's usage
errors included), no traceback and nothing left in its output location (issue 25).

One table row per (tool, bad input); each runs the tool's `main(argv)` in-process (a subprocess would pay the imports
again), so every row must be refused before any model or data set is loaded. A full disk is simulated by making
`plugin.quant.io._atomic_write` (the writer of reports, saved models and tables) fail half-way with ENOSPC."""
import errno
import importlib.util
import os
import sys

import pytest
import torch

from repo_paths import REPO  # noqa: E402

TOOLS = os.path.join(REPO, "tools")
CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")
PC_CONFIG = os.path.join(REPO, "configs/pointcloud/modelnet10_pointmae_ti.py")
DET_CONFIG = os.path.join(REPO, "configs/detection/mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person.py")


def tool(name):
    """tools/<name>.py as a module (tools/ on the path, as when it runs as a script)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    key = f"_bad_input_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(TOOLS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


class OsSystem:
    """Pickles as a call of os.system: what a hostile checkpoint carries (never executed here)."""

    def __reduce__(self):
        return (os.system, ("echo never run",))


def make_files(tmp):
    """The bad inputs that are files, under `tmp`."""
    (tmp / "notjson").mkdir()
    (tmp / "notjson" / "report.json").write_text("{not json")
    (tmp / "notjson" / "fidelity.json").write_text("[1, 2")
    (tmp / "otherjson").mkdir()
    (tmp / "otherjson" / "report.json").write_text('{"a": 1}')
    (tmp / "otherjson" / "fidelity.json").write_text('{"a": 1}')
    (tmp / "scalars.json").write_text('{"lr": 0.1, "step": 1}\n')
    (tmp / "text.npz").write_text("not an npz")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": OsSystem()}, tmp / "evil.pth")
    for name, train in (("epochs_neg.py", "epochs=-1"), ("batch_zero.py", "batch_size=0"),
                        ("lr_text.py", "lr='fast'")):
        text = open(CONFIG).read().split("train = dict(")[0].replace("plugin/assets", os.path.join(REPO, "plugin/assets"))
        (tmp / name).write_text(text + f"train = dict(data='fashion_mnist', {train})\n")
    pc = open(PC_CONFIG).read().split("train = dict(")[0]
    (tmp / "pc_epochs_zero.py").write_text(pc + "train = dict(epochs=0)\n")


# (tool, argv with {tmp} and {out}, words the one line must hold)
CASES = [
    ("ptq_test", [CONFIG, CKPT, "--bits", "9", "--out", "{out}"], ["--bits", "2 to 8"]),
    ("ptq_test", [CONFIG, CKPT, "--calib-num", "0", "--out", "{out}"], ["--calib-num"]),
    ("ptq_test", [CONFIG, CKPT, "--nope", "--out", "{out}"], ["unrecognized", "--nope"]),
    ("ptq_test", [CONFIG, "--out", "{out}"], ["required"]),
    ("ptq_test", ["{tmp}/missing.py", CKPT, "--out", "{out}"], ["config", "not found"]),
    ("ptq_test", [CONFIG, "{tmp}/missing.pth", "--out", "{out}"], ["checkpoint not found"]),
    ("ptq_test", [CONFIG, "{tmp}/evil.pth", "--out", "{out}", "--quiet"],
     ["refused: loading it would run code (posix.system)", "--unsafe-load only for files you trust"]),
    ("ptq_test", [CONFIG, CKPT, "--method", "nope", "--out", "{out}", "--quiet"], ["nope"]),
    ("ptq_test", [CONFIG, CKPT, "--launcher", "pytorch", "--out", "{out}"], ["--launcher", "one process"]),
    ("benchmark", ["--w-bits", "9"], ["--w-bits"]),
    ("benchmark", ["--calib-num", "0"], ["--calib-num"]),
    ("benchmark", ["--quick", "--device", "cpu", "--model", "nope"], ["unknown model", "nope"]),
    ("benchmark", ["--quick", "--device", "cpu", "--method", "nope"], ["unknown method", "nope"]),
    ("benchmark", ["--iters", "-3", "--out", "{out}/b.json"], ["--iters"]),
    ("compare_official", [CONFIG, CKPT, "--bits", "x", "--out", "{out}"], ["--bits"]),
    ("compare_official", [CONFIG, CKPT, "--out", "{out}"], ["required", "--official"]),
    ("deploy_eval", [CONFIG, CKPT, "--w-bits", "1", "--out", "{out}/d.json"], ["--w-bits"]),
    ("deploy_eval", [CONFIG, CKPT, "--num-test", "0", "--out", "{out}/d.json"], ["--num-test"]),
    ("deploy_eval", ["{tmp}/missing.py", CKPT, "--device", "cpu", "--out", "{out}/d.json"], ["not found"]),
    ("diagnose_roi_recon", [DET_CONFIG, CKPT], ["--targets"]),
    ("recon_reference", [CONFIG, CKPT, "--method", "nope"], ["unknown method", "nope"]),
    ("recon_reference", [CONFIG, CKPT, "--method", "aphq", "--bits", "9"], ["--bits"]),
    ("recon_reference", [CONFIG, CKPT, "--method", "aphq", "--tol", "0"], ["--tol"]),
    ("recon_reference", ["{tmp}/missing.py", CKPT, "--method", "aphq"], ["not found"]),
    ("recon_reference", [CONFIG, "{tmp}/missing.pth", "--method", "aphq"], ["not found"]),
    ("recon_reference", [CONFIG, "{tmp}/evil.pth", "--method", "aphq"], ["refused", "would run code"]),
    ("diagnose_roi_recon", [DET_CONFIG, CKPT, "--targets", "own", "--bits", "1"], ["--bits"]),
    ("int8_gemm_sweep", ["--m", "0", "--out", "{out}/s.json"], ["--m"]),
    ("make_cifar_subset", ["{tmp}/missing.npz", "{out}/c.npz"], ["missing.npz"]),
    ("make_cifar_subset", ["{tmp}/text.npz", "{out}/c.npz"], ["not a packed CIFAR-10 file"]),
    ("make_cifar_subset", ["{tmp}/text.npz", "{out}/c.npz", "--train-num", "0"], ["--train-num"]),
    ("make_coco_subset", ["{tmp}/missing", "{out}"], ["COCO root not found"]),
    ("make_coco_subset", ["{tmp}", "{out}", "--max-side", "0"], ["--max-side"]),
    ("make_embedded_data", ["--seed", "-1", "--out", "{out}"], ["--seed"]),
    ("make_embedded_data", ["--fashion-mnist", "{tmp}/nothing", "--out", "{out}"], ["nothing"]),
    ("make_results", ["{tmp}/nothing", "--out", "{out}"], ["no report.json"]),
    ("make_results", ["{tmp}/notjson", "--out", "{out}"], ["not a JSON report"]),
    ("make_results", ["{tmp}/otherjson", "--out", "{out}"], ["not a tools/ptq_test.py report"]),
    ("make_results", ["--out", "{out}"], ["required", "runs"]),
    ("make_synthetic_parts", ["{out}", "--points", "0"], ["--points"]),
    ("make_synthetic_parts", ["{out}", "--train", "-1"], ["--train"]),
    ("merge_fidelity", ["{tmp}/nothing", "--out", "{out}"], ["no fidelity.json"]),
    ("merge_fidelity", ["{tmp}/notjson", "--out", "{out}"], ["not a JSON table"]),
    ("merge_fidelity", ["{tmp}/otherjson", "--out", "{out}"], ["not a tools/compare_official.py table"]),
    ("mosf_check", [CONFIG, CKPT, "--bits", "9"], ["--bits"]),
    ("mosf_check", ["{tmp}/missing.py", CKPT], ["not found"]),
    ("pc_predict", [PC_CONFIG, CKPT, "--out", "{out}/p.png"], ["--input", "--index"]),
    ("pc_predict", ["{tmp}/missing.py", CKPT, "--index", "0", "--out", "{out}/p.png"], ["not found"]),
    ("plot_train_curve", ["{tmp}/missing.json", "--out", "{out}/c.png"], ["no such file"]),
    ("plot_train_curve", ["{tmp}/scalars.json", "--out", "{out}/c.png"], ["no training losses"]),
    ("timm_swin_to_mmdet", ["{tmp}/missing.safetensors", "{out}/b.pth"], ["not found"]),
    ("timm_swin_to_mmdet", [CKPT, "{out}/b.pth"], ["not a timm Swin"]),
    ("train_cls", [CONFIG, "--out", "{out}", "--epochs", "-1"], ["--epochs", "positive integer"]),
    ("train_cls", [CONFIG, "--out", "{out}", "--batch-size", "0"], ["--batch-size", "positive integer"]),
    ("train_cls", [CONFIG, "--out", "{out}", "--lr", "nan"], ["--lr"]),
    ("train_cls", [CONFIG, "--out", "{out}", "--label-smoothing", "1.5"], ["--label-smoothing"]),
    ("train_cls", [CONFIG, "--out", "{out}", "--train-num", "0"], ["--train-num"]),
    ("train_cls", [CONFIG, "--out", "{out}", "--device", "gpu7"], ["--device", "gpu7"]),
    ("train_cls", ["{tmp}/epochs_neg.py", "--out", "{out}"], ["train epochs", "-1"]),
    ("train_cls", ["{tmp}/batch_zero.py", "--out", "{out}"], ["train batch_size", "0"]),
    ("train_cls", ["{tmp}/lr_text.py", "--out", "{out}"], ["train lr", "fast"]),
    ("train_cls", [CONFIG], ["--out"]),
    ("train_det", ["{tmp}/missing.py"], ["not found"]),
    ("train_det", [DET_CONFIG], ["--work-dir DIR"]),
    ("train_det", [DET_CONFIG, "--max-time", "0"], ["--max-time"]),
    ("train_det", [DET_CONFIG, "--seed", "-2"], ["--seed"]),
    ("train_pc", [PC_CONFIG, "--out", "{out}", "--epochs", "0"], ["--epochs"]),
    ("train_pc", [PC_CONFIG, "--out", "{out}", "--batch-size", "-1"], ["--batch-size"]),
    ("train_pc", [PC_CONFIG, "--out", "{out}", "--workers", "-1"], ["--workers"]),
    ("train_pc", ["{tmp}/pc_epochs_zero.py", "--out", "{out}"], ["train epochs", "0"]),
    ("train_pc", ["{tmp}/missing.py", "--out", "{out}"], ["not found"]),
    ("bench_det_agreement", ["--images", "0"], ["--images"]),
]
if torch.cuda.is_available():
    CASES = [c for c in CASES if c[0] != "int8_gemm_sweep"]
else:
    CASES.append(("int8_gemm_sweep", ["--out", "{out}/s.json"], ["needs a CUDA GPU"]))


def assert_one_line_refusal(code, err, out, words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    assert all(w.lower() in lines[0].lower() for w in words), lines[0]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))  # nothing left where it writes


def call(name, argv):
    try:
        return tool(name).main(argv)
    except SystemExit as exc:  # argparse usage errors exit from inside parse_args, as in a real run
        return exc.code


@pytest.mark.parametrize("name, argv, words", CASES, ids=[f"{c[0]}:{' '.join(c[1])[-40:]}" for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, name, argv, words):
    make_files(tmp_path)
    out = tmp_path / "out"
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{out}", str(out)) for a in argv]
    code = call(name, argv)
    assert_one_line_refusal(code, capsys.readouterr().err, out, words)


@pytest.fixture
def disk_full(monkeypatch):
    """Every atomic write fails half-way with ENOSPC, as on a full disk (the partial temporary file is cleaned up)."""
    import plugin.quant.io as qio
    real = qio._atomic_write

    def full(path, write_fn):
        def partial(tmp):
            with open(tmp, "w") as f:
                f.write("partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
        return real(path, partial)
    monkeypatch.setattr(qio, "_atomic_write", full)


def test_disk_full_at_save_time_is_one_line(tmp_path, capsys, disk_full):
    out = tmp_path / "out"
    code = call("ptq_test", [CONFIG, CKPT, "--method", "minmax", "--bits", "8", "--calib-num", "4", "--save-model",
                             "--no-fp", "--quiet", "--device", "cpu", "--out", str(out)])
    assert_one_line_refusal(code, capsys.readouterr().err, out, ["no space left on device"])


def test_disk_full_in_a_table_tool_is_one_line(tmp_path, capsys, disk_full):
    import json
    run = tmp_path / "run"
    run.mkdir()
    (run / "fidelity.json").write_text(json.dumps([dict(
        model="m", method="repq", w_bits=4, a_bits=4, seeds=[0], official_runs=[50.0], ours_runs=[51.0], fp=80.0)]))
    out = tmp_path / "out"
    code = call("merge_fidelity", [str(run), "--out", str(out)])
    assert_one_line_refusal(code, capsys.readouterr().err, out, ["no space left on device"])
