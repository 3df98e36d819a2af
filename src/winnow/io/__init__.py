"""Data in and results out: sources that yield chunks, atomic outputs, resumable part files."""
