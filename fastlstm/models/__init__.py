"""Models built on fastlstm.LSTM."""

from fastlstm.models.sentiment import PRESETS, SentimentClassifier

__all__ = ["PRESETS", "SentimentClassifier"]
