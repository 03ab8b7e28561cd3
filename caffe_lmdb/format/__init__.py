"""Record formats: bytes <-> records (pure functions; imports nothing of the package but
errors)."""
