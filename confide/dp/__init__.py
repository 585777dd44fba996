"""Differential-privacy math for Confide: accountants, clipping and noise (NumPy/SciPy only).

This package never imports torch or opacus, so the agent daemon can account privacy without
a deep-learning framework; Opacus is only the reference its tests compare against.
"""

__all__: list[str] = []  # import the modules (confide.dp.rdp, .prv, .accountant, ...) directly
