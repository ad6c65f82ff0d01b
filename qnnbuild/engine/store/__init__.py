"""Where outputs live: the local content-addressed store, the shared cache, and a session's traffic with it."""
