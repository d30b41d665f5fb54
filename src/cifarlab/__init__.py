"""cifarlab: define, train, evaluate, sweep, repeat and report image-classification experiments."""
__version__ = "0.1.0"
