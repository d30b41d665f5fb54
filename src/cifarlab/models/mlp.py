"""Multi-layer perceptrons on flattened pixels (seed 000's first baseline, seed 004's 4-layer MLP)."""
import torch.nn as nn

from cifarlab.models.registry import register_model


@register_model("mlp", family="mlp")
def mlp(num_classes=10, in_channels=3, image_size=32, hidden=(512, 256), dropout=0.0, activation="relu",
        batchnorm=False):
    """MLP: flatten -> [Linear -> (BatchNorm1d) -> act -> (Dropout)] per hidden width -> Linear."""
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
    if activation not in acts:
        raise ValueError(f"activation must be one of {', '.join(acts)}")
    if isinstance(hidden, int):
        hidden = (hidden,)
    layers, width = [nn.Flatten()], in_channels * image_size * image_size
    for h in hidden:
        layers += [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if batchnorm else []) + [acts[activation]()]
        layers += [nn.Dropout(dropout)] if dropout else []
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
