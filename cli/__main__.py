"""``python -m dynalign.cli`` runs the ``dynalign`` command."""

from dynalign.cli.main import main

main()
