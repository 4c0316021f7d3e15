"""Stage phantom: a CAMUS-like phantom written in CAMUS's own file formats (the default data)."""
