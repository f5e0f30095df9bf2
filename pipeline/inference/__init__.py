"""Tagging audio with a trained student: loading a run, windowed prediction, ONNX export."""
