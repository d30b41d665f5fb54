"""CLI commands of the "Studies" issue (sweep, worker, repeat, compare, lr-find) register on `app` here."""
from cifarlab.cli.main import app  # noqa: F401
