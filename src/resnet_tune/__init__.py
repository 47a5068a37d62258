"""resnet-tune: residual networks built correctly, fine-tuned fast, exported and served."""

__version__ = "0.1.0"

from .models import ResNet, ResNetConfig, build_model, create_model, list_models, model_info

__all__ = ["ResNet", "ResNetConfig", "__version__", "build_model", "create_model", "list_models", "model_info"]
