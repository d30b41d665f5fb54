"""Seed 004's LeNet-5-style CNN: two unpadded 3x3 convs with 2x2 pooling, then three dense layers.

The seed's best ("Model 3", almost 75%) printed as conv1 3->64, conv2 64->128, dense1 4608->512,
dense2 512->512, dense3 512->10, the names used here. The printed tree has no pooling modules, so
the seed pooled functionally; 4608 = 128x6x6 needs a 2x2 pool after each conv (32 -> 30 -> 15 ->
13 -> 6). Max pooling and ReLU are assumed (the report names neither); here they show in the
printed tree as `act` and `pool` (no parameters). Its earlier models are channels=[16, 32] and
[32, 64] with hidden=[512, 256]. The same network family as the tutorial CNN, hence its class.
"""
from cifarlab.models.registry import register_model
from cifarlab.models.tutorial import ConvNet


@register_model("lenet5", family="lenet")
def lenet5(num_classes=10, in_channels=3, image_size=32, channels=(64, 128), hidden=(512, 512), kernel_size=3,
           pool="max", activation="relu"):
    """Seed 004's LeNet-5-style CNN (3->64->128, 4608-512-512-10; almost 75%)."""
    return ConvNet(num_classes, in_channels, image_size, channels, kernel_size, hidden, activation, pool,
                   fc_name="dense")
