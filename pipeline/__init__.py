"""Pipeline stages: archive -> Zarr store -> Ray Train -> MLflow registry.

Each stage is a plain function taking a typed config (dataclass) and returning a
result object. Heavy imports (ray, mlflow, dask, zarr) happen inside functions.
"""
from pipeline.errors import NowcastError

__all__ = ["NowcastError"]
