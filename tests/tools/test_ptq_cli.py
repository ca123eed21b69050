"""tools/ptq_test.py end to end on the embedded default, and its handling of bad input."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tools"))
import ptq_test  # noqa: E402

CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")


def run_cli(*argv):
    return ptq_test.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def embedded_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptq")
    code = run_cli(CONFIG, CKPT, "--bits", "4", "--method", "minmax", "ptq4vit", "repq", "--out", out, "--quiet",
                   "--device", "cpu")
    assert code == 0
    return out, json.load(open(out / "report.json"))


def test_embedded_default_end_to_end(embedded_report):
    out, report = embedded_report
    assert report["fp"]["top1"] > 70.0  # the shipped model is a real classifier
    assert [r["method"] for r in report["results"]] == ["minmax", "ptq4vit", "repq"]
    for r in report["results"]:
        assert (r["w_bits"], r["a_bits"]) == (4, 4)
        assert 0.0 <= r["metrics"]["top1"] <= 100.0 and r["metrics"]["num_images"] == report["fp"]["num_images"]
        assert r["calib_time_s"] > 0 and r["calib_num"] == 32
        assert ["blocks.*.mlp.fc1", 4, "fc1"] == r["plan"]["sites"][-3][:3]  # the resolved plan, compact
    repq = report["results"][2]["plan"]
    assert repq["norm_groups"] == 9 and repq["reparam_groups"] == 8  # RepQ-ViT leaves the head's group unfolded
    md = open(out / "report.md").read()
    for r in report["results"]:
        assert f"{r['metrics']['top1']:.2f}" in md  # the Markdown shows the same numbers as the JSON
        agreement = r["agreement"]  # with the float model, image by image
        assert 0 <= agreement["top1_agreement"] <= 100 and agreement["mean_kl"] >= 0
        change = agreement["top1_change"]
        assert change["diff"] == pytest.approx(r["metrics"]["top1"] - report["fp"]["top1"], abs=1e-6)
        assert change["ci95"][0] <= change["diff"] <= change["ci95"][1]
    assert "Agreement with the full-precision model" in md
    assert f"{report['fp']['top1']:.2f}" in md


def test_fp_only_evaluates_the_float_model_alone(embedded_report, tmp_path):
    assert run_cli(CONFIG, CKPT, "--fp-only", "--out", tmp_path, "--quiet", "--device", "cpu") == 0
    report = json.load(open(tmp_path / "report.json"))
    assert report["results"] == [] and report["fp"] == embedded_report[1]["fp"]
    md = open(tmp_path / "report.md").read()
    assert "| full precision | 32/32 |" in md and "calibration samples" not in md


def test_repq_w8a8_close_to_float(tmp_path):
    assert run_cli(CONFIG, CKPT, "--bits", "8", "--method", "repq", "--out", tmp_path, "--quiet", "--device", "cpu") == 0
    report = json.load(open(tmp_path / "report.json"))
    assert abs(report["results"][0]["metrics"]["top1"] - report["fp"]["top1"]) < 2.0


def _assert_failed(capsys, code, out_dir, words):
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err.lower() and all(w.lower() in err.lower() for w in words), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    # nothing is left behind: an output folder the run created is removed, one that existed stays empty
    assert not os.path.exists(out_dir) or os.listdir(out_dir) == [], os.listdir(out_dir)


def test_missing_config(tmp_path, capsys):
    _assert_failed(capsys, run_cli(tmp_path / "nope.py", CKPT, "--out", tmp_path / "out"), tmp_path / "out", ["config", "not found"])


def test_missing_checkpoint(tmp_path, capsys):
    _assert_failed(capsys, run_cli(CONFIG, tmp_path / "nope.pth", "--out", tmp_path / "out"), tmp_path / "out", ["checkpoint"])


def test_mismatched_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"blocks.0.wrong.weight": torch.zeros(3)}}, bad)
    _assert_failed(capsys, run_cli(CONFIG, bad, "--out", tmp_path / "out", "--quiet"), tmp_path / "out", ["does not match"])


class NotATensor:
    """An arbitrary class: unpickling it needs code from this module, which weights_only loading refuses."""


def test_pickled_checkpoint_refused(tmp_path, capsys):
    bad = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": NotATensor()}, bad)
    _assert_failed(capsys, run_cli(CONFIG, bad, "--out", tmp_path / "out", "--quiet"), tmp_path / "out",
                   ["--unsafe-load", "test_ptq_cli.NotATensor"])  # the refused object is named


def test_pickle_refusal_is_one_plain_line(tmp_path, capsys):
    bad = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": NotATensor()}, bad)
    assert run_cli(CONFIG, bad, "--out", tmp_path / "out", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert "\x1b" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_checkpoint_is_not_sent_to_unsafe_load(tmp_path, capsys, damage):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(100)}, good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:120] if damage == "truncated" else bytes(range(7, 250)) * 8)
    assert run_cli(CONFIG, bad, "--out", tmp_path / "out", "--quiet") == 2
    err = capsys.readouterr().err
    assert "not a readable" in err and "--unsafe-load" not in err and "Traceback" not in err


def test_shape_mismatch_names_both_shapes(tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    state = load_file(CKPT)
    state["head.weight"], state["head.bias"] = torch.zeros(1000, state["head.weight"].shape[1]), torch.zeros(1000)
    bad = tmp_path / "head1000.safetensors"
    save_file(state, str(bad))
    _assert_failed(capsys, run_cli(CONFIG, bad, "--out", tmp_path / "out", "--quiet"), tmp_path / "out",
                   ["head.weight (1000, 64) in the checkpoint, (10, 64) in the model"])


@pytest.mark.parametrize("argv", [["--bits", "9"], ["--bits", "1"], ["--calib-num", "0"], ["--w-bits", "x"],
                                  ["--recon-iters", "0"], ["--recon-setting", "huge"]])
def test_bad_numbers_rejected_by_parser(tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        run_cli(CONFIG, CKPT, "--out", tmp_path, *argv)
    assert exc.value.code == 2
    assert not os.path.exists(tmp_path / "report.json")


def test_calib_num_larger_than_data(tmp_path, capsys):
    code = run_cli(CONFIG, CKPT, "--calib-num", "100000", "--out", tmp_path / "out", "--quiet", "--no-fp")
    _assert_failed(capsys, code, tmp_path / "out", ["100000"])


def test_unknown_method(tmp_path, capsys):
    _assert_failed(capsys, run_cli(CONFIG, CKPT, "--method", "nosuch", "--out", tmp_path / "out"), tmp_path / "out", ["nosuch"])


def test_nan_activations_during_calibration(tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    state = load_file(CKPT)
    key = next(k for k in state if k.endswith("mlp.fc1.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    bad = str(tmp_path / "nan.safetensors")
    save_file(state, bad)
    code = run_cli(CONFIG, bad, "--out", tmp_path / "out", "--quiet", "--no-fp")
    _assert_failed(capsys, code, tmp_path / "out", ["non-finite"])


def test_exit_code_of_the_real_process(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools/ptq_test.py"), CONFIG, str(tmp_path / "x.pth")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr


def test_freeze_evaluates_the_integer_path(tmp_path):
    code = run_cli(CONFIG, CKPT, "--bits", "8", "--method", "minmax", "--freeze", "--no-fp", "--out", tmp_path,
                   "--quiet", "--device", "cpu")
    assert code == 0
    entry = json.load(open(tmp_path / "report.json"))["results"][0]
    assert entry["int8"]["frozen_layers"] > 0 and entry["int8"]["backend"] == "int_mm"
    # the integer path computes the same codes as fake-quant; only float rounding of the epilogue differs
    assert abs(entry["int8"]["metrics"]["top1"] - entry["metrics"]["top1"]) <= 0.5
    assert "integer path" in open(tmp_path / "report.md").read()


@pytest.mark.parametrize("extra, message", [
    ((), "--int8-backend triton applies to the integer path: add --freeze"),
    (("--freeze",), "--int8-backend triton needs --device cuda, not cpu"),
])
def test_triton_backend_refused_where_it_cannot_run(tmp_path, capsys, extra, message):
    code = run_cli(CONFIG, CKPT, "--bits", "8", "--method", "minmax", "--int8-backend", "triton", *extra,
                   "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_w_and_a_bits_reach_the_quantizers(tmp_path, monkeypatch):
    """--w-bits and --a-bits set the weight and the activation quantizers separately (not --bits for both)."""
    import plugin.pipeline.run as pipeline
    from plugin.quant.calibrate import iter_quantizers
    seen, real = {}, pipeline.quantize

    def spy(model, recipe, *args, **kwargs):
        out = real(model, recipe, *args, **kwargs)
        seen.update({name: q.bits for name, q in iter_quantizers(out)})
        return out

    monkeypatch.setattr(pipeline, "quantize", spy)
    assert run_cli(CONFIG, CKPT, "--w-bits", "3", "--a-bits", "6", "--method", "minmax", "--no-fp", "--out", tmp_path,
                   "--quiet", "--device", "cpu") == 0
    weights = {b for n, b in seen.items() if n.endswith("weight_quantizer")}
    acts = {b for n, b in seen.items() if not n.endswith("weight_quantizer") and not n.startswith("patch_embed")}
    assert weights == {3} and acts == {6}
    entry = json.load(open(tmp_path / "report.json"))["results"][0]
    assert (entry["w_bits"], entry["a_bits"]) == (3, 6)


def test_calibration_size_checked_before_any_evaluation(tmp_path, capsys, monkeypatch):
    """isvit asks for 1024 images by default; the embedded set has 512: one line naming both, before the float
    evaluation, and no folder left behind."""
    from plugin.classification.task import ClassificationTask

    def no_eval(*a, **k):
        raise AssertionError("evaluated before the calibration size was checked")

    monkeypatch.setattr(ClassificationTask, "evaluate", no_eval)
    out = tmp_path / "new_out"
    _assert_failed(capsys, run_cli(CONFIG, CKPT, "--method", "minmax", "isvit", "--out", out, "--quiet"), out,
                   ["isvit needs 1024", "holds 512", "--calib-num"])
    assert not out.exists()


def test_config_calib_num_is_honoured(tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text(f"_base_ = [{CONFIG!r}]\ncalib = dict(num=16, batch_size=8)\n")
    assert run_cli(config, CKPT, "--method", "minmax", "--out", tmp_path / "o", "--quiet", "--no-fp",
                   "--device", "cpu") == 0
    assert json.load(open(tmp_path / "o" / "report.json"))["results"][0]["calib_num"] == 16


def test_unwritable_out_fails_up_front(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _assert_failed(capsys, run_cli(CONFIG, CKPT, "--out", blocker / "sub", "--quiet"), blocker / "sub",
                   ["cannot write to the output folder"])


def test_failed_run_leaves_no_saved_models(tmp_path, capsys, monkeypatch):
    import plugin.pipeline.run as pipeline
    from plugin.errors import CalibrationError
    calls, real = [], pipeline.quantize

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise CalibrationError("simulated failure of the second method")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "quantize", second_fails)
    _assert_failed(capsys, run_cli(CONFIG, CKPT, "--method", "minmax", "repq", "--save-model", "--no-fp", "--out",
                                   tmp_path, "--quiet", "--device", "cpu"), tmp_path, ["simulated failure"])
    assert os.listdir(tmp_path) == []  # neither models/ nor a staging folder


def test_saved_models_appear_with_the_report(tmp_path):
    assert run_cli(CONFIG, CKPT, "--method", "minmax", "--save-model", "--no-fp", "--out", tmp_path, "--quiet",
                   "--device", "cpu") == 0
    assert sorted(os.listdir(tmp_path)) == ["models", "report.json", "report.md"]
    assert sorted(os.listdir(tmp_path / "models")) == ["minmax_w4a4.json", "minmax_w4a4.safetensors"]
    entry = json.load(open(tmp_path / "report.json"))["results"][0]
    assert entry["saved_model"] == str(tmp_path / "models" / "minmax_w4a4")
    # W4: the weights as packed codes, the file size and the float one in the report
    size = os.path.getsize(tmp_path / "models" / "minmax_w4a4.safetensors")
    assert entry["saved_model_bytes"] == size and entry["saved_model_float_bytes"] > 3 * size
    assert entry["saved_packed_weights"] > 0 and entry["saved_float_weights"] == {}
    md = open(tmp_path / "report.md").read()
    assert (f"Saved model `{entry['saved_model']}`: {size / 2 ** 20:.2f} MiB (float weights: "
            f"{entry['saved_model_float_bytes'] / 2 ** 20:.2f} MiB") in md



def test_help_lists_the_methods(capsys):
    with pytest.raises(SystemExit):
        ptq_test.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "default repq" in out and all(m in out for m in ("minmax", "ptq4vit", "repq_strict", "isvit", "aiqvit"))


def test_markdown_agreement_reads_undefined_as_na_and_marks_ties():
    change = {"diff": 0.3, "ci95": [-0.4, 1.0], "tie": True, "resamples": 1000}
    report = {"config": "c.py", "checkpoint": "m.pth", "task": "detection", "device": "cpu", "seed": 0,
              "fp": {"bbox_mAP": 8.6}, "results": [
                  {"method": "repq", "w_bits": 4, "a_bits": 4, "metrics": {"bbox_mAP": 8.9}, "calib_time_s": 1.0,
                   "calib_num": 1, "agreement": {"bbox_mAP_agreement": None, "bbox_mAP_change": change}}]}
    from plugin.pipeline import markdown_report
    md = markdown_report(report)
    assert "| repq | 4/4 | bbox_mAP_agreement n/a | bbox_mAP_change +0.30 [-0.40, +1.00] (tie) |" in md


def _nonempty(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    return out


# (argv after CONFIG CKPT, words of the one error line); each runs with --out tmp_path/out
BAD_INPUTS = [
    (["--fp-only", "--no-fp"], ["exclude each other"]),
    (["--w-bits", "3", "--bits", "4", "6"], ["cannot be combined"]),
    (["--method", "nosuch"], ["nosuch"]),
    (["--onnx-nonuniform", "float"], ["add --export-onnx"]),
    (["--cfg-options", "novalue"], ["KEY=VALUE"]),
    (["--cfg-options", "task=nosuch"], ["unknown task", "nosuch"]),
    (["--method", "isvit"], ["isvit needs 1024", "(method default)", "holds 512"]),
]


@pytest.mark.parametrize("argv, words", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    _assert_failed(capsys, run_cli(CONFIG, CKPT, *argv, "--out", out, "--quiet", "--device", "cpu"), out, words)
    assert os.listdir(tmp_path) == []  # no staging folder beside --out either


def test_non_empty_out_refused_without_overwrite(tmp_path, capsys):
    out = _nonempty(tmp_path)
    assert run_cli(CONFIG, CKPT, "--method", "minmax", "--out", out, "--quiet", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not empty" in err and "--overwrite" in err
    assert os.listdir(out) == ["report.json"] and (out / "report.json").read_text() == "{}"


def test_overwrite_replaces_the_previous_run_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "out"
    common = ["--save-model", "--no-fp", "--calib-num", "8", "--out", out, "--quiet", "--device", "cpu"]
    assert run_cli(CONFIG, CKPT, "--method", "minmax", *common) == 0
    (out / "command.txt").write_text("what a script wrote")
    assert run_cli(CONFIG, CKPT, "--method", "repq", "--overwrite", *common) == 0
    assert sorted(os.listdir(out)) == ["command.txt", "models", "report.json", "report.md"]
    assert sorted(os.listdir(out / "models")) == ["repq_w4a4.json", "repq_w4a4.safetensors"]  # no stale minmax
    assert [r["method"] for r in json.load(open(out / "report.json"))["results"]] == ["repq"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the staging folder is gone
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_report_records_the_job_iterations_and_calibration_source(tmp_path):
    """isvit with --recon-iters: the iterations that ran are in the report (no `iters: null`), with the batch and
    where the calibration size came from."""
    code = run_cli(CONFIG, CKPT, "--method", "isvit", "--recon-iters", "2", "--calib-num", "8", "--no-fp",
                   "--out", tmp_path / "o", "--quiet", "--device", "cpu")
    assert code == 0
    report = json.load(open(tmp_path / "o" / "report.json"))
    entry = report["results"][0]
    assert entry["calib_num"] == 8 and entry["calib_source"] == "--calib-num"
    assert entry["recon"] == [{"kind": "sos", "setting": "paper", "iters": 2, "batch_size": 64, "batch_used": 8}]
    assert entry["recipe"]["passes"][0]["iters"] == 2 and entry["recipe"]["passes"][0]["batch_size"] == 64
    assert report["job"]["recon_iters"] == 2 and report["job"]["plans"][0]["calib_source"] == "--calib-num"
    assert "isvit W4A4: 8 samples (--calib-num), sos 2 iterations batch 8" in open(tmp_path / "o" / "report.md").read()


def test_w_bits_alone_is_weight_only(tmp_path):
    assert run_cli(CONFIG, CKPT, "--w-bits", "8", "--method", "minmax", "--out", tmp_path / "o", "--quiet",
                   "--device", "cpu") == 0
    report = json.load(open(tmp_path / "o" / "report.json"))
    entry = report["results"][0]
    assert (entry["w_bits"], entry["a_bits"], entry["weight_only"]) == (8, 16, True)
    assert abs(entry["metrics"]["top1"] - report["fp"]["top1"]) <= 1.0  # W8 weights alone barely matter
    md = open(tmp_path / "o" / "report.md").read()
    assert "| minmax | 8/16 (weight-only) |" in md and "activations stay in float" in md


def test_dry_run_describes_without_calibrating(tmp_path, capsys, monkeypatch):
    """Issue 25.1's command line resolves (the setting reaches isvit's sos pass only), prints the plan and sites,
    calibrates and writes nothing."""
    import plugin.pipeline.run as pipeline
    monkeypatch.setattr(pipeline, "quantize", lambda *a, **k: pytest.fail("--dry-run calibrated"))
    code = run_cli(CONFIG, CKPT, "--method", "repq", "ptq4vit", "isvit", "--recon-setting", "small", "--calib-num",
                   "64", "--dry-run", "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0
    out = capsys.readouterr().out
    assert "isvit W4A4: 64 calibration samples (--calib-num); passes: sos; sos small: 250 iterations, batch 32" in out
    assert "ptq4vit W4A4: 64 calibration samples (--calib-num); passes: hessian_search" in out
    assert "repq_w4a4: 26 quantized modules" in out and os.listdir(tmp_path) == []
    # the resolved plan, one line per module pattern: isvit's post-LN inputs channel-wise, the stem's input 8-bit
    assert re.search(r"blocks\.\*\.attn\.qkv +x4 +qkv +input=uniform:4/channel/mse weight=uniform:4/channel/mse "
                     r"\[post-LN\]", out)
    assert re.search(r"patch_embed\.proj +x1 +patch_embed +input=uniform:8/tensor/minmax", out)


def _foreign_model(tmp_path, name, **kwargs):
    """A timm model no adapter knows, on the embedded data (28x28 grey, 10 classes), with its random weights."""
    import timm
    from safetensors.torch import save_file
    kwargs = dict(num_classes=10, in_chans=1, **kwargs)
    state = timm.create_model(name, **kwargs).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"_base_ = [{CONFIG!r}]\nmodel = dict(_delete_=True, name={name!r}, kwargs={kwargs!r})\n")
    return cfg, tmp_path / "w.safetensors"


@pytest.mark.parametrize("name, kwargs, arch", [
    ("test_resnet", {}, "ResNet"),
    ("mixer_s16_224", dict(img_size=32), "MlpMixer")])  # the model of issue 25.6, on 2x2 patches
def test_unsupported_architecture_refused_before_evaluation(tmp_path, capsys, monkeypatch, name, kwargs, arch):
    from plugin.classification.task import ClassificationTask
    monkeypatch.setattr(ClassificationTask, "evaluate", lambda *a, **k: pytest.fail("evaluated first"))
    cfg, ckpt = _foreign_model(tmp_path, name, **kwargs)
    out = tmp_path / "out"
    _assert_failed(capsys, run_cli(cfg, ckpt, "--out", out, "--quiet", "--device", "cpu"), out,
                   [f"no adapter knows the architecture {arch}"])
