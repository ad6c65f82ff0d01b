"""The ground floor: stdlib and errors only (atomic writes, hashing and stamp caches, crash points, child processes)."""
