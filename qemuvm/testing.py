"""pytest plugin (placeholder until the workflow issue lands)."""
