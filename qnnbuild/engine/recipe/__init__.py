"""The recipe's text → a checked Plan: YAML with positions, the JSON Schema, semantic checks, the plan and its cache."""
