"""The PTQ pipeline the tools share: one validated job (`resolve_job` -> `Job`), its run (`run_job`, `dry_run`) and
its report (`markdown_report`). Above the task layer: it builds tasks from configs and drives plugin.quant."""
from .job import CALIB_SOURCES, WEIGHT_ONLY_A_BITS, Job, MethodPlan, ReconPlan, resolve_job, resolve_recipe
from .outdir import OutputFolder, check_out_dir
from .report import agreement_cells, markdown_report, write_reports
from .run import dry_run, run_job

__all__ = ["CALIB_SOURCES", "Job", "MethodPlan", "OutputFolder", "ReconPlan", "WEIGHT_ONLY_A_BITS",
           "agreement_cells", "check_out_dir", "dry_run", "markdown_report", "resolve_job", "resolve_recipe",
           "run_job", "write_reports"]
