"""Site datasets as the daemon declares them; the reader they share is ``confide.data``."""
