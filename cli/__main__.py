"""``python -m cli`` runs the ``dynalign`` command."""

from cli.main import main

main()
