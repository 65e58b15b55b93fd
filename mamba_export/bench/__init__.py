"""`mamba-export bench`: latency of prefill and decode across backends, with a report."""

from .configs import PUBLISHED, published_config, random_model
from .report import REPORT_FILES, write_reports
from .runner import Settings, check_backend_names, run_bench

__all__ = ["PUBLISHED", "REPORT_FILES", "Settings", "check_backend_names", "published_config", "random_model",
           "run_bench", "write_reports"]
