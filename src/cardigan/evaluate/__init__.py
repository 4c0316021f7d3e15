"""Evaluate stage: does the synthetic dataset help a segmenter on real images?

Entry point :func:`run_evaluate`; docs/evaluate.md says what is measured and how.
"""

from cardigan.evaluate.stage import SETTINGS, run_evaluate

__all__ = ["SETTINGS", "run_evaluate"]
