"""Metrics of explanation quality, each with its paper's protocol as a named preset (PROTOCOLS.md).

- Faithfulness: :func:`insertion_deletion` (presets ``"rise"``, ``"thesis"``, ``"groupcam"``),
  :func:`positive_negative_perturbation` (Chefer et al.).
- Localisation: :func:`pointing_game` (``"torchray"``, ``"thesis-top100"``), :func:`segmentation_scores` (and per image,
  :func:`per_image_segmentation_iou`); streaming
  accumulators :class:`PointingGame`, :class:`SegmentationScores`; detail: :func:`energy_pointing_game` (Score-CAM),
  :func:`boundary_f_score` (BF score).
- Sanity: :func:`model_randomisation` (Adebayo et al., cascading / independent).
- Robustness: :func:`max_sensitivity` (Yeh et al.).

Every function returns a :class:`MetricResult` dataclass: per-sample values and curves, ``summary()`` aggregates,
``higher_is_better`` per score, ``to_dict()`` and ``csv_row()``.

By name, every metric takes its arguments in one order (:mod:`xaiimg.metrics.registry`)::

    get_metric(name)(model, inputs, saliency_or_explainer, targets=None, **options)

``inputs``: the model's input batch ``[B,C,H,W]``; then the saliency maps ``[B,1,h,w]`` or, for the metrics that
explain again (``explains``: ``"model-randomisation"``, ``"max-sensitivity"``), the explainer; ``targets``: ``None``
(the predicted class), an int or one class per image; ``options``: the function's own keywords, the ground truth
of the localisation metrics among them (``masks=``, or ``boxes=`` for the pointing game). A metric that does not use
an argument (the localisation metrics do not run the model) still takes it in its place.
:func:`available_metrics` lists the names; each :class:`Metric` declares its scores' directions
(``higher_is_better``), ``category``, ``paper`` and ``per_image`` (scores each image from the maps alone).
"""
from xaiimg.metrics.detail import BoundaryResult, EnergyPointingResult, boundary_f_score, energy_pointing_game
from xaiimg.metrics.faithfulness import (
                                   PROTOCOLS,
                                   InsertionDeletionProtocol,
                                   InsertionDeletionResult,
                                   insertion_deletion,
                                   trapezoid_auc,
)
from xaiimg.metrics.localisation import (
                                   PointingGame,
                                   PointingGameResult,
                                   SegmentationResult,
                                   SegmentationScores,
                                   average_precision,
                                   boxes_to_mask,
                                   per_image_segmentation_iou,
                                   pointing_game,
                                   segmentation_scores,
)
from xaiimg.metrics.perturbation import CHEFER_FRACTIONS, PerturbationResult, positive_negative_perturbation
from xaiimg.metrics.registry import Metric, available_metrics, get_metric, register_metric
from xaiimg.metrics.results import MetricResult
from xaiimg.metrics.robustness import SensitivityResult, max_sensitivity
from xaiimg.metrics.sanity import RandomisationResult, model_randomisation, randomisable_layers, ssim
from xaiimg.ops import spearman_correlation

__all__ = [
    "BoundaryResult", "EnergyPointingResult", "boundary_f_score", "energy_pointing_game", "CHEFER_FRACTIONS",
    "PROTOCOLS", "InsertionDeletionProtocol", "InsertionDeletionResult", "Metric", "MetricResult",
    "PerturbationResult", "PointingGame", "PointingGameResult", "RandomisationResult", "SegmentationResult",
    "SegmentationScores", "SensitivityResult", "available_metrics", "average_precision", "boxes_to_mask",
    "get_metric", "insertion_deletion", "max_sensitivity", "model_randomisation", "per_image_segmentation_iou",
    "pointing_game",
    "positive_negative_perturbation", "randomisable_layers", "register_metric", "segmentation_scores",
    "spearman_correlation", "ssim", "trapezoid_auc",
]
