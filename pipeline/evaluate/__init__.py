"""Evaluation on the test split, its metrics and their uncertainty over seeds, and the reports."""
