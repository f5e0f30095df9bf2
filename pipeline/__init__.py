"""Small, fast music classifiers that learn from cached embeddings of large audio models (EAsT)."""

__version__ = "0.1.0"
