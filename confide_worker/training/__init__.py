"""Torch side of the agent's worker: built-in models, devices, local training and DP-SGD.

Only the worker process imports this package; the agent daemon never imports torch.
"""
