"""Confide aggregator: sites, jobs, the round state machine, the store and the admin API.

Never imports torch (DESIGN.md): model math is NumPy only.
"""
