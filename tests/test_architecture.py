"""The layering of docs/architecture.md, checked on the source: plugin/quant is a torch-only library (no adapter, task
or OpenMMLab/timm import); packages import only the layers below them; a method package imports only the core and
recon; no import cycle; no file under plugin/ or tools/ over 400 lines; `import plugin` for classification imports no OpenMMLab
library."""
import ast
import pathlib

from repo_paths import REPO

PLUGIN = pathlib.Path(REPO) / "plugin"
# Each top-level part of plugin/ and the parts it may import (the layers of docs/architecture.md).
ALLOWED = {
    "quant": set(),
    "errors": {"quant"}, "utils": {"errors"}, "config": {"errors"},
    "adapters": {"quant"},
    "tasks": {"quant", "errors"},
    "classification": {"quant", "tasks", "errors", "utils", "config"},
    "detection": {"quant", "tasks", "errors", "utils", "config"},
    "pointcloud": {"quant", "tasks", "errors", "utils", "config"},
    "pipeline": {"quant", "tasks", "errors", "config"},
    "bench": {"quant", "classification", "errors", "utils"},
}


def _modules():
    out = {}
    for p in PLUGIN.rglob("*.py"):
        parts = p.relative_to(PLUGIN.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name, path, modules):
    """Every plugin module `name` imports, anywhere in the file (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def test_quant_is_a_torch_only_library():
    for p in (PLUGIN / "quant").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:
                assert n.split(".")[0] not in {"mmdet", "mmengine", "mmcv", "timm"}, f"{p} imports {n}"
                assert not n.startswith("plugin.") or n.startswith("plugin.quant"), f"{p} imports {n}"


def test_no_file_under_plugin_or_tools_over_400_lines():
    """Short modules with one job: split by concept, not by size; tools are thin over the library."""
    for p in [*PLUGIN.rglob("*.py"), *(PLUGIN.parent / "tools").rglob("*.py")]:
        lines = len(p.read_text().splitlines())
        assert lines <= 400, f"{p.relative_to(PLUGIN.parent)} has {lines} lines"


def test_layers_and_no_cycles():
    modules = _modules()
    graph = {m: {t for t in _imports(m, p, modules) if not t.startswith(m + ".")} for m, p in modules.items()}
    for m, targets in graph.items():
        part = m.split(".")[1] if "." in m else None
        for t in targets:
            other = t.split(".")[1]
            if part is not None and other != part:
                assert other in ALLOWED[part], f"{m} imports {t}: {part} may import only {sorted(ALLOWED[part])}"
    state = {}

    def visit(m, path):
        state[m] = "open"
        for t in graph[m]:
            assert state.get(t) != "open", "import cycle: " + " -> ".join(path + [m, t])
            if t not in state:
                visit(t, path + [m])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [])


def test_extension_examples_run():
    """The worked examples of docs/architecture.md ("Extending": a quantizer; a model, its adapter and a calibration),
    executed as written, one after the other; the quantizer and the adapter are each under 40 lines."""
    text = (pathlib.Path(REPO) / "docs" / "architecture.md").read_text()
    section = text.split("## Extending", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 3
    assert len(blocks[0].splitlines()) < 40 and len(blocks[2].splitlines()) < 40
    namespace = {"__name__": "architecture_examples"}
    for block in blocks:
        exec(compile(block, "docs/architecture.md", "exec"), namespace)


def test_core_api_example_runs():
    """The first example of docs/architecture.md's "Core API" section (the one-call quantize, input size, save and
    load_quantized(path) without a float model), executed as written."""
    text = (pathlib.Path(REPO) / "docs" / "architecture.md").read_text()
    section = text.split("## Core API", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "docs/architecture.md", "exec"), {"__name__": "core_api_example"})


def test_methods_import_only_the_core_and_recon():
    """Each package under plugin/quant/methods/ is one method, whole: it imports the core (plugin.quant's own modules)
    and the reconstruction engine (plugin.quant.recon), never another method and never plugin.quant.deploy."""
    modules = _modules()
    methods = sorted(p.name for p in (PLUGIN / "quant" / "methods").iterdir() if (p / "__init__.py").is_file())
    assert {"minmax", "ptq4vit", "repq", "isvit", "dopq", "aiqvit"} <= set(methods)
    for m, path in modules.items():
        parts = m.split(".")
        if parts[:3] != ["plugin", "quant", "methods"] or len(parts) < 4:
            continue
        own = ".".join(parts[:4])
        for t in _imports(m, path, modules):
            if t == own or t.startswith(own + "."):
                continue
            assert not t.startswith("plugin.quant.methods"), f"{m} imports {t}: a method imports no other method"
            assert not t.startswith("plugin.quant.deploy"), f"{m} imports {t}: a method imports nothing of deploy/"
            assert t.startswith("plugin.quant"), f"{m} imports {t}: a method imports only plugin.quant"


def _fresh_python(code):
    """The output lines of `code` run by a new interpreter from the repository root."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


def test_import_plugin_for_classification_imports_no_openmmlab():
    """`import plugin` knows the task names but imports a task package on its first lookup; classification (config
    loading included) imports neither MMDetection, MMEngine nor MMCV, nor timm before a model is built."""
    code = ("import sys, plugin\n"
            "heavy = lambda: sorted(m for m in ('mmdet', 'mmengine', 'mmcv', 'timm') if m in sys.modules)\n"
            "print(heavy())\n"
            "from plugin.tasks.base import TASKS, get_task\n"
            "assert {'classification', 'detection', 'pointcloud_cls'} <= set(TASKS)\n"
            "from plugin.config import load_config\n"
            "get_task(load_config('configs/classification/fmnist_vit_tiny.py')['task'])\n"
            "print(heavy())\n")
    assert _fresh_python(code)[:2] == ["[]", "[]"]


def test_import_plugin_registers_the_timm_recorder_without_timm():
    """A fresh `import plugin` (the README's Python example) records timm models at save time: the timm model recorder
    is registered by `import plugin` itself, and imports timm only when first used."""
    code = ("import sys, plugin\n"
            "from plugin.quant.model_record import MODEL_RECORDERS\n"
            "print('timm' in MODEL_RECORDERS.names(), 'timm' in sys.modules)\n"
            "import timm\n"
            "from plugin.quant.model_record import describe_model\n"
            "m = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=4, depth=2, num_classes=10)\n"
            "print(describe_model(m)['timm_kwargs']['depth'])\n")
    assert _fresh_python(code)[:2] == ["True False", "2"]
