"""``rallycast matches``: list, delete and sync the record of play (scorer/record_cli.py)."""

from scorer.record_cli import configure_matches as configure
from scorer.record_cli import matches_main as main

__all__ = ["configure", "main"]
