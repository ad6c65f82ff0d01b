"""One run: Sessions (the only holders of a build's state), the doit bridge, results, lock and console."""
