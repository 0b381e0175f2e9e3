"""Rallycast's composition root: commands that drive the whole system (broker, scorer
service, clients) rather than one part of it. ``rallycast.soak``: kill -9 under load, then check
that no confirmed press was lost, doubled or invented (docs/reliability.md)."""
