"""What a benchmark run measures and how (the options of tools/benchmark.py, as data the library reads)."""
from dataclasses import dataclass, field, fields
from typing import List, Optional


@dataclass
class BenchSettings:
    """Models, methods and timing of the per-model benchmark and the Linear micro-benchmark."""
    model: List[str] = field(default_factory=list)
    method: List[str] = field(default_factory=list)
    w_bits: int = 8
    a_bits: int = 8
    batch_size: int = 64          # evaluation images per timed forward
    calib_num: int = 32           # calibration images
    calib_batch: int = 32         # calibration images per forward
    iters: Optional[int] = None   # iterations of reconstruction / low-rank passes (None: the recipe's)
    eval_batches: int = 10        # timed forwards per model variant
    warmup: int = 2               # untimed forwards before each timing
    micro_m: Optional[int] = None  # tokens of the Linear micro-benchmark (None: batch_size x tokens per image)
    micro_reps: int = 20
    cuda_graph: bool = False      # time forwards and Linear ops as CUDA-graph replays
    compile: bool = False         # torch.compile every timed model and layer
    onnx: bool = False            # also time ONNX Runtime CPU exports
    onnx_threads: Optional[int] = None
    onnx_reps: int = 20
    quick: bool = False           # toy model and layer sizes
    verbose: bool = False         # calibration progress to stderr
    calib_only: bool = False      # calibration time and memory only
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    no_block_skip: bool = False
    model_kwargs: dict = field(default_factory=dict)
    micro_only: bool = False      # only the Linear micro-benchmark
    no_micro: bool = False        # skip it
    int8_backend: str = "int_mm"  # matmul of the frozen models' Int8Linear layers (recorded; set by the caller)

    @classmethod
    def from_namespace(cls, ns):
        """The settings named like the attributes of an argparse Namespace."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


@dataclass
class E2ESettings:
    """The deployment-throughput grid: paths x models x batches (plugin/bench/e2e.py)."""
    e2e_models: List[str]
    e2e_batches: List[int]
    e2e_paths: List[str]
    e2e_method: str = "minmax"
    e2e_min_time: float = 0.5
    e2e_budget_s: Optional[float] = None
    e2e_profile: Optional[List[str]] = None
    e2e_no_compile: bool = False
    e2e_first: List[str] = field(default_factory=list)
    e2e_try_all: bool = False
    calib_num: int = 32
    calib_batch: int = 32
    quick: bool = False

    @classmethod
    def from_namespace(cls, ns):
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})
