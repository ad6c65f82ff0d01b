"""What determines an output: key documents, code digests, tool versions, and status verdicts."""
