"""Contention signals: the user's focus and presence (ManicTime) and agent processes (psutil)."""
