"""Everything that differs between Linux, macOS and Windows, one small module per concern.

The rest of the package calls these and never `os.killpg`, `signal.SIGKILL`, `termios` or `/proc`
directly, so `mypy --platform win32` and `--platform darwin` hold over all of it.
"""
