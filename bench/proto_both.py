"""Prototype (for measurement only): bench/proto_claim.py and bench/proto_fastpath.py together.

`python -m bench.e2e_allocate --prototype bench.proto_both` measures both changes beside the real server.
"""

from __future__ import annotations


def main() -> None:
    from bench import proto_claim, proto_fastpath

    proto_claim.install()
    proto_fastpath.install()
    import anyio

    from server.app import serve_stdio

    anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
