"""Embedded storage on SQLite (WAL, one writer thread with group commit, any number of readers)."""
