"""Samples and figures: calibration sources, text data, accuracy metrics."""
