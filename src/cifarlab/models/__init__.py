"""The model zoo: `build_model(name, num_classes=..., **options)`; `cifarlab models` lists them.

Importing a family module registers its models; add a new family by adding its import here.
"""
from cifarlab.models import (  # noqa: F401  (registers the models)
    cifarnet,
    deep_residual,
    expert,
    layerspec,
    lenet,
    mlp,
    resnet,
    speedrun,
    tutorial,
    vgg,
)
from cifarlab.models.registry import build_model, count_parameters, get_entry, model_names, register_model

__all__ = ["build_model", "count_parameters", "get_entry", "model_names", "register_model"]
