"""The conflict radar: which live allocations will collide at merge time, predicted while they work.

Kept free of heavy imports: the edit guard (`guard.py`) runs on every edit and imports this package.
"""
