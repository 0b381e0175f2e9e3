"""``rallycast export``: CSV or JSON of a club's matches or of one match (scorer/record_cli.py)."""

from scorer.record_cli import configure_export as configure
from scorer.record_cli import export_main as main

__all__ = ["configure", "main"]
