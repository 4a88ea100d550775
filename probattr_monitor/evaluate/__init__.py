"""Faithfulness evaluation of AS against other attribution methods (the paper's section 5; ``probattr evaluate``).

Modules: the replacement operator every method is perturbed with
(``perturbation``), the Captum baselines (``baselines``), ReAgent (``reagent``), the metrics and their
directions (``metrics``), running every method on a prompt (``runner``),
tables, exports and figures (``outputs``).
"""

from probattr_monitor.evaluate.metrics import DIRECTIONS, FaithfulnessScores
from probattr_monitor.evaluate.reagent import ReagentSettings
from probattr_monitor.evaluate.runner import (
    METHODS,
    EvaluationSettings,
    MethodEvaluation,
    PromptEvaluation,
    evaluate_probe_set,
    evaluate_prompt,
)

__all__ = ["DIRECTIONS", "METHODS", "EvaluationSettings", "FaithfulnessScores", "MethodEvaluation",
           "PromptEvaluation", "ReagentSettings", "evaluate_probe_set", "evaluate_prompt"]
