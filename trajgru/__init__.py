"""TrajGRU precipitation nowcasting model library (pure PyTorch + numpy).

Public entry points: :func:`build_model`, :func:`model_from_config`, :class:`ModelConfig`,
:class:`EncoderForecaster`; submodules ``units``, ``warp``, ``cells``, ``model``, ``losses``,
``metrics``, ``baselines``.
"""

from . import units  # noqa: F401
from .model import EncoderForecaster, ModelConfig, build_model, model_from_config

__all__ = ["EncoderForecaster", "ModelConfig", "build_model", "model_from_config", "units"]
