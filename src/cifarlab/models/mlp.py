"""Multi-layer perceptrons on flattened pixels (seed 000's arch 5, seed 004's 4-layer MLPs).

The seeds' networks, as `hidden`:
  seed 004, first MLP       [512, 512, 256]   (44% at lr 0.001, 48.5% at 0.005, no momentum)
  seed 004, Model 1         [512, 512, 512]   (54-55%, lr 0.005, momentum 0.9, 10 epochs)
  seed 004, Model 2         [256, 256, 256]   (54-55%; its printed NeuralNetwork: 920,842 parameters)
  seed 000, architecture 5  [128, 64]         (49-52%)
Seed 004's printed `NeuralNetwork` (Flatten, then Linear/ReLU pairs in `linear_relu_stack`) is the
PyTorch quickstart's; this is the same stack without the nesting.
"""
import torch.nn as nn

from cifarlab.models.helpers import check_probability, check_widths, get_act_layer
from cifarlab.models.registry import register_model


@register_model("mlp", family="mlp")
def mlp(num_classes=10, in_channels=3, image_size=32, hidden=(512, 256), dropout=0.0, activation="relu",
        batchnorm=False):
    """MLP: flatten -> [Linear -> (BatchNorm1d) -> act -> (Dropout)] per hidden width -> Linear."""
    act = get_act_layer(activation)
    hidden = check_widths("hidden", hidden, at_least=0, what="positive layer widths")
    check_probability("dropout", dropout)
    layers, width = [nn.Flatten()], in_channels * image_size * image_size
    for h in hidden:
        layers += [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if batchnorm else []) + [act()]
        layers += [nn.Dropout(dropout)] if dropout else []
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
