"""Unknown inputs ("none of these"): how typical of a model's training data an image is.

scorers.py      in-distribution scorers registered by name (`SCORERS`: msp, energy,
                mahalanobis, knn), each fitted to a `State` of named tensors and settings
calibration.py  typicality (the share of validation images less typical) and the refusal rule
storage.py      a `State` as model-file tensors and metadata, and back
measures.py     how well scores separate two sets: FPR at 95% TPR, AUROC
features.py     a network's penultimate features and logits, what the scorers read
"""

from pawlab.unknown.calibration import DEFAULT_THRESHOLD, calibrate, check_threshold, refused, typicality
from pawlab.unknown.features import features_and_logits, split_last_linear
from pawlab.unknown.measures import auroc, fpr_at_95
from pawlab.unknown.scorers import DEFAULT_METHOD, SCORERS, State, fit, score
from pawlab.unknown.storage import PREFIX, from_tensors, to_tensors

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_THRESHOLD",
    "PREFIX",
    "SCORERS",
    "State",
    "auroc",
    "calibrate",
    "check_threshold",
    "features_and_logits",
    "fit",
    "fpr_at_95",
    "from_tensors",
    "refused",
    "score",
    "split_last_linear",
    "to_tensors",
    "typicality",
]
