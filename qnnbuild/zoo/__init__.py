"""Model definitions shipped with qnnbuild so recipes build without downloading weights."""
