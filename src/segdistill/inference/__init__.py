"""Prediction: tiling math, input sources and the streaming predictor."""
