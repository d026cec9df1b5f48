"""The whole study in one call: compare, probes, merged variants with evaluation, freezing; one report."""

from frankenlab.study.config import STAGES, STANDARD_VARIANTS, StudyConfig, StudyConfigError, load_config, parse_config
from frankenlab.study.run import run_study, write_report

__all__ = ["STAGES", "STANDARD_VARIANTS", "StudyConfig", "StudyConfigError", "load_config", "parse_config",
           "run_study", "write_report"]
