"""Bounds on what a recipe may be, shared by the loader and the plan cache (kept import-free for speed)."""

MAX_BYTES = 1 << 20  # a recipe is a page of text; a megabyte is already absurd
MAX_NODES = 100_000  # values after alias expansion: stops "billion laughs"
MAX_DEPTH = 64
MAX_PROBLEMS = 50  # a recipe with more is reported by its first 50: a hostile one must answer in well under 2 s
