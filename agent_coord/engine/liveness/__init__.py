"""Which agents are alive: process identity and the judgement over it."""
