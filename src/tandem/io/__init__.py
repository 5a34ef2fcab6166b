"""Files: atomic writes, run-directory marker and lock, weight files, figures (the bottom layer)."""
