"""Helpers shared by tests of every area (no production code imports them)."""
