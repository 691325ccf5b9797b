"""Models built on fastlstm.LSTM."""

from fastlstm.models.sentiment import POOLINGS, PRESETS, ModelSettings, SentimentClassifier

__all__ = ["POOLINGS", "PRESETS", "ModelSettings", "SentimentClassifier"]
