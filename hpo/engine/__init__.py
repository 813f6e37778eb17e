"""engine wing."""
