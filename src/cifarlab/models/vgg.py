"""Seed 000's VGG-style series (architectures 2, 6, 8, 13) and its residual variants (14, 15).

Each network is written as a layer spec that follows the seed's `forward` line by line (the
`__init__` blocks in the report are not always what ran: arch 15's names its conv `layer5` a
Linear, arch 13 defines `batchnorm2` and never calls it). Sizes are inferred, so the seed's
hand-computed `Linear(8192, 128)` becomes whatever the image size gives (8192 at 32x32).

The seed believed that calling one layer several times stacks several layers: from arch 3 on its
forward applies `layer5` (conv 512->512, and its BatchNorm) three times, and its residual blocks
two or three times. `literal=True` (the default: what the seed trained and reported) reuses the
same weights, exactly as that code did; `literal=False` gives the intended independent layers.
Parameters the seed created but never used in its forward (an unused `batchnorm2`, each residual
block's unused `batch_norm`, arch 15's `residual2` whose output it discarded) are left out:
they change nothing the network computes. Arch 10's softmax (and arch 4's) is not reproduced:
every cifarlab model outputs logits and the loss applies the softmax.
"""
import inspect

from cifarlab.models.helpers import check_flag, check_probability, check_whole
from cifarlab.models.layerspec import build
from cifarlab.models.registry import register_model

POOL = {"pool": "max"}


def conv(c):
    return {"conv": c, "kernel": 3, "padding": 1}


def times(n, layers, shared, between=()):
    return {"repeat": n, "shared": shared, "layers": layers, "between": list(between)}


def drop(p):
    return [{"dropout": p}] if p else []


def residual(c):
    # The seed's ResidualBlock: conv -> relu -> conv, plus the input; no activation after the sum.
    return {"residual": [conv(c), "relu", conv(c)]}


HEAD = ["flatten", {"linear": 128}, "relu", {"linear": 64}, "relu", {"linear": "classes"}]


def _check(dropout, literal=True):
    check_flag("literal", literal)
    check_probability("dropout", dropout)


def arch2_spec(dropout=0.25):
    _check(dropout)
    return [conv(64), "relu", POOL, conv(128), "relu", POOL, conv(256), "relu", conv(512), "relu",
            "flatten", {"linear": 128}, "relu", {"linear": 64}, "relu", *drop(dropout), {"linear": "classes"}]


def arch6_spec(literal=True, dropout=0.15):
    _check(dropout, literal)
    return [conv(64), "relu", POOL, conv(128), "relu", POOL, conv(256), "relu", conv(512), "relu",
            times(3, [conv(512), "relu"], literal), POOL,
            "flatten", *drop(dropout), {"linear": 128}, "relu", {"linear": 64}, "relu", *drop(dropout),
            {"linear": "classes"}]


def arch8_spec(literal=True, dropout=0.15):
    _check(dropout, literal)
    return [conv(64), "relu", "bn", POOL, *drop(dropout), conv(128), "relu", "bn", POOL, *drop(dropout),
            conv(256), "relu", "bn", conv(512), "relu", "bn", times(3, [conv(512), "relu", "bn"], literal), POOL, *HEAD]


def arch13_spec(literal=True, dropout=0.15):
    return _arch13(literal, dropout)


def arch14_spec(literal=True, dropout=0.15):
    return _arch13(literal, dropout, after_conv2=[times(2, [residual(128), "relu"], literal)])


def _arch13(literal, dropout, after_conv2=()):
    # As 8 with BatchNorm moved before the ReLU; the seed's forward skips batchnorm2 after layer2.
    _check(dropout, literal)
    return [conv(64), "bn", "relu", POOL, conv(128), "relu", *after_conv2, *drop(dropout),
            conv(256), "bn", "relu", *drop(dropout), POOL, conv(512), "bn", "relu",
            times(3, [conv(512), "bn", "relu"], literal), POOL, *HEAD]


def arch15_spec(literal=True, dropout=0.15, res_blocks=3):
    _check(dropout, literal)
    n = check_whole("res_blocks", res_blocks)
    # `self.residual2(x)` without `x =`: literally, the 128-channel blocks compute nothing that is kept.
    res2 = [] if literal else [times(n, [residual(128)], literal, between=["relu"])]
    return [conv(64), "relu", times(n, [residual(64), "relu"], literal), "bn", "relu", POOL,
            conv(128), "relu", *res2, "bn", "relu", *drop(dropout),
            conv(256), times(n, [residual(256)], literal, between=["relu"]), "bn", "relu", *drop(dropout), POOL,
            conv(512), "relu", times(n, [residual(512)], literal, between=["relu"]), "bn", "relu",
            times(3, [conv(512), "bn", "relu"], literal), POOL, *HEAD]


def _register(name, spec, summary):
    """Register model `name`, whose options are the arguments of its spec function."""
    def factory(num_classes=10, in_channels=3, image_size=32, **options):
        return build(spec(**options), num_classes, in_channels, image_size)
    standard = list(inspect.signature(factory).parameters.values())[:3]
    factory.__signature__ = inspect.Signature(standard + list(inspect.signature(spec).parameters.values()))
    factory.__name__, factory.__doc__ = name, summary
    register_model(name, family="vgg")(factory)


_register("vgg_arch2", arch2_spec, "Seed 000 arch 2: 4 convs (64-512, two max-pools), FC 128-64 with dropout; 75-76%.")
_register("vgg_arch6", arch6_spec, "Seed 000 arch 6/7: convs 64-512, then conv 512 applied 3 times; 79-82% (arch 7).")
_register("vgg_arch8", arch8_spec, "Seed 000 arch 8: arch 6 with BatchNorm after each ReLU and dropout early; 86%.")
_register("vgg_arch13", arch13_spec, "Seed 000 arch 13 (its best, 90.22%): arch 8 with BatchNorm before ReLU.")
_register("vgg_arch14", arch14_spec, "Seed 000 arch 14: arch 13 + a 128-channel residual block applied twice; 88%.")
_register("vgg_arch15", arch15_spec, "Seed 000 arch 15: arch 13 + residual blocks after every conv (3 per stage); 85%.")
