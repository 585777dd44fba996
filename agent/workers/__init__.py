"""The daemon's side of the worker process.

The pool, the handle and the sandbox that locks it in (no torch here).
"""
