"""`python -m cifarlab ...` is the `cifarlab` command."""
from cifarlab.cli.main import main

main()
