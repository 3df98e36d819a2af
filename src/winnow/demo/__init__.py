"""The bundled demo: the whole pipeline on scikit-learn's digits, and a small PyTorch model."""

from .pipeline import run_demo, write_parquet_dataset

__all__ = ["run_demo", "write_parquet_dataset"]
