"""The agent role."""
