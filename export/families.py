"""The decoder families the graph builder writes: the table is ``alter_edge.families`` (one
table, shared with the MTA injection); this module names it for the exporter."""

from alter_edge.families import FAMILIES, SUPPORTED, Family

__all__ = ["FAMILIES", "SUPPORTED", "Family"]
