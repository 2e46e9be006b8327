"""Pipeline stages: archive -> Zarr store -> Ray Train -> MLflow registry.

Each stage (ingest, train, evaluate, predict) is a plain function taking a typed config dataclass
(validated in ``__post_init__`` with :func:`pipeline.errors.check`) and returning a result object.
Stages never import each other; what two of them share lives a level down (store, dataset,
checkpoints, forecasters, tracking). Only ``cli.py`` defers imports, to keep ``nowcast --help`` fast.
"""

from pipeline.errors import NowcastError

__all__ = ["NowcastError"]
