"""Fakes of external services (only those: our own code is tested for real)."""
