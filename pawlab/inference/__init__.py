"""Inference: a model file's `Model`, and everything that runs it.

model.py       `Model` and `load_model`: predict an image, a list (`Predictions`), with test-time views
engine.py      the one batched path: channels-last, guarded bf16, compiled frozen graphs
features.py    a frozen trunk's features, computed once and cached
guard.py       which images guarded bf16 runs again in fp32: the rules by name and a record's setting
agreement.py   whether guarded bf16 agrees with fp32 (checked after training): the rule and its tolerances
evaluation.py  `evaluate`: metrics, confusion matrix and figures on labelled data
submission.py  `submit`: a streamed, resumable Kaggle CSV, sharded under torchrun
unknowns.py    `calibrate_unknown`, `evaluate_unknown`: a model's in-distribution model, fitted and measured
generator.py   `Generator` and `load_generator`: a class and a latent in, an image out
routes.py      what runs a model: a runtime (torch, onnxruntime) and a precision, as asked
runtimes.py    `load_model`: a model file's ONNX graphs in the user cache, and its fastest route per CPU
ort.py         onnxruntime as a runtime: the network as an ONNX graph, run as a torch module is
quantize.py    static int8 quantization (QDQ) of an ONNX graph, calibrated on training images
splits.py      a model's own training and validation images, to calibrate and check on
"""

from pawlab.config import INFERENCE_PRECISIONS as PRECISIONS
from pawlab.config import INFERENCE_RUNTIMES as RUNTIMES
from pawlab.inference.evaluation import EvalReport, evaluate, metrics_from_probs
from pawlab.inference.generator import Generator, load_generator
from pawlab.inference.model import Model, Prediction, Predictions
from pawlab.inference.routes import Route
from pawlab.inference.runtimes import load_model
from pawlab.inference.submission import SubmitReport, submit
from pawlab.inference.unknowns import UnknownReport, calibrate_unknown, evaluate_unknown

__all__ = [
    "EvalReport",
    "Generator",
    "Model",
    "Prediction",
    "PRECISIONS",
    "Predictions",
    "RUNTIMES",
    "Route",
    "SubmitReport",
    "UnknownReport",
    "calibrate_unknown",
    "evaluate",
    "evaluate_unknown",
    "load_generator",
    "load_model",
    "metrics_from_probs",
    "submit",
]
