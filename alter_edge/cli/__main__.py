"""``python -m alter_edge.cli``."""

from alter_edge.cli import main

main()
