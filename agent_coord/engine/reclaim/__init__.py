"""Taking back what dead agents held: rescue of their work, then the slot."""
