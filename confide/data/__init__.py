"""Site data as both the agent daemon and its worker read it: description, reader, split.

``confide.data.datasets`` describes a dataset, counts its records, reads it into NumPy arrays
and splits off the hold-out set; ``confide.data.standardize`` centres and scales features.
The daemon (record counts for the DP sampling rate, its start-up check) and the worker
(``confide_worker``, training) import the same code, so they read the same files and agree
on the split bit for bit. No torch, no config parsing.
"""
