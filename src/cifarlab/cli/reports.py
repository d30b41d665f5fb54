"""CLI commands of the "Reports" issue (report, runs, summary, predict, export) register on `app` here."""
from cifarlab.cli.main import app  # noqa: F401
