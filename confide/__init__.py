"""Confide: federated learning for organizations that must not move their data.

This package is the shared library: wire codecs, PKI, signing, secure-aggregation math,
differential-privacy accounting, configuration and logging. It imports neither ``agent``
nor ``aggregator``, and never imports torch.
"""

__version__ = "0.1.0"
