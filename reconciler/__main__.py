"""`python -m reconciler` is `recon`."""

from reconciler.cli import main

main()
