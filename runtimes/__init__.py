"""edgevision's device runtime: numpy + Pillow + one engine; never imports TensorFlow or edgevision."""

from runtimes.prediction import BoundingBox, ImagePrediction, Prediction, classification_predictions
from runtimes.preprocess import ImageDecodeError, load_image, preprocess

__all__ = [
    "BoundingBox",
    "ImageDecodeError",
    "ImagePrediction",
    "Prediction",
    "classification_predictions",
    "load_image",
    "preprocess",
]
