"""Broker fixtures for the whole suite (owned by the broker work)."""
