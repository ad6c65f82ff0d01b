"""Bounds on what a recipe may be, shared by the loader and the plan cache (kept import-free for speed)."""

MAX_BYTES = 1 << 20  # a recipe is a page of text; a megabyte is already absurd
MAX_NODES = 100_000  # values after alias expansion: stops "billion laughs"
MAX_DEPTH = 64
