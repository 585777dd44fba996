"""The secagg package exports exactly its documented names."""

from __future__ import annotations

import confide.secagg


def test_all_is_exact() -> None:
    """Every public attribute is in __all__ and every name in __all__ exists."""
    public = {
        n
        for n in dir(confide.secagg)
        if not n.startswith("_")
        and n
        not in {
            "client",
            "encoding",
            "graph",
            "masking",
            "params",
            "prg",
            "rotation",
            "server",
            "shamir",
            "sharebox",
            "view",
        }
    }
    assert public == set(confide.secagg.__all__)
    assert len(confide.secagg.__all__) == len(set(confide.secagg.__all__))
