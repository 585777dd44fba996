"""The site's privacy plan for each round and the crash-safe ledger that charges it."""
