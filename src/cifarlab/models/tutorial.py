"""The PyTorch CIFAR-10 tutorial CNN (seed 001's starting point and the speed yardstick's model)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.registry import register_model


class TutorialCNN(nn.Module):
    """conv(3->6,5) -> pool -> conv(6->16,5) -> pool -> fc 120 -> fc 84 -> fc classes, ReLU."""

    def __init__(self, num_classes=10, in_channels=3, image_size=32):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((image_size - 4) // 2 - 4) // 2  # inferred, never hand-computed
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@register_model("tutorial_cnn", family="tutorial")
def tutorial_cnn(num_classes=10, in_channels=3, image_size=32):
    """The PyTorch CIFAR-10 tutorial network, exactly (62,006 parameters on CIFAR-10)."""
    return TutorialCNN(num_classes, in_channels, image_size)
