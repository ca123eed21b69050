"""Reading an exported ONNX file back: `graph_stats` (op counts, initializer bytes by type) and `OrtModule`, an ONNX
Runtime CPU session as a module, so a task's own `evaluate(model)` scores the exported file unchanged."""
import torch
import torch.nn as nn

from .onnx_export import check_onnx_available


def graph_stats(path):
    """Op counts and initializer bytes by element type of an ONNX file (for reports and tests)."""
    import onnx
    from onnx import numpy_helper
    g = onnx.load(path).graph
    ops = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    by_type = {}
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        key = str(arr.dtype)
        by_type[key] = by_type.get(key, 0) + arr.nbytes
    return {"ops": ops, "initializer_bytes": by_type}


class OrtModule(nn.Module):
    """An ONNX Runtime session as a module: forward(x) runs the graph on the CPU and returns a torch tensor.

    Lets a task's own `evaluate(model)` score the exported file unchanged.
    """

    def __init__(self, path, threads=None):
        super().__init__()
        check_onnx_available()
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x):
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


__all__ = ["OrtModule", "graph_stats"]
