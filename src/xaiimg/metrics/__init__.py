"""Metrics of explanation quality, each with its paper's protocol as a named preset (PROTOCOLS.md).

- Faithfulness: :func:`insertion_deletion` (presets ``"rise"``, ``"thesis"``, ``"groupcam"``),
  :func:`positive_negative_perturbation` (Chefer et al.).
- Localisation: :func:`pointing_game` (``"torchray"``, ``"thesis-top100"``), :func:`segmentation_scores`; streaming
  accumulators :class:`PointingGame`, :class:`SegmentationScores`.
- Sanity: :func:`model_randomisation` (Adebayo et al., cascading / independent).
- Robustness: :func:`max_sensitivity` (Yeh et al.).

Every function returns a :class:`MetricResult` dataclass: per-sample values and curves, ``summary()`` aggregates,
``higher_is_better`` per score, ``to_dict()`` and ``csv_row()``.
"""
from xaiimg.metrics.faithfulness import (PROTOCOLS, InsertionDeletionProtocol, InsertionDeletionResult,
                                         insertion_deletion, trapezoid_auc)
from xaiimg.metrics.localisation import (PointingGame, PointingGameResult, SegmentationResult, SegmentationScores,
                                         average_precision, boxes_to_mask, pointing_game, segmentation_scores)
from xaiimg.metrics.perturbation import CHEFER_FRACTIONS, PerturbationResult, positive_negative_perturbation
from xaiimg.metrics.results import MetricResult
from xaiimg.metrics.robustness import SensitivityResult, max_sensitivity
from xaiimg.metrics.sanity import (RandomisationResult, model_randomisation, randomisable_layers, spearman_correlation,
                                   ssim)

__all__ = [
    "CHEFER_FRACTIONS", "PROTOCOLS", "InsertionDeletionProtocol", "InsertionDeletionResult", "MetricResult",
    "PerturbationResult", "PointingGame", "PointingGameResult", "RandomisationResult", "SegmentationResult",
    "SegmentationScores", "SensitivityResult", "average_precision", "boxes_to_mask", "insertion_deletion",
    "max_sensitivity", "model_randomisation", "pointing_game", "positive_negative_perturbation",
    "randomisable_layers", "segmentation_scores", "spearman_correlation", "ssim", "trapezoid_auc",
]
