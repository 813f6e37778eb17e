"""db wing."""
