"""Inference on users' own scans: `Predictor(checkpoint).predict(path)` -> `Prediction`, and its writers."""

from volt.inference.outputs import FORMATS, save_prediction
from volt.inference.predictor import Prediction, Predictor

__all__ = ["FORMATS", "Prediction", "Predictor", "save_prediction"]
