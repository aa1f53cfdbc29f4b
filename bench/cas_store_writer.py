"""A design probe for bench/store_cas.py and bench/store_cas_pg.py (`--store-writer`): one writer process
per host, as bench/cas_host_writer.py, but the writer is agent-coord's own `Store` (either engine) and
the workers are the store's callers: they forward each call (`claim_any_free_slot`, `claim_new_slot`,
`transition`: the name and its arguments) over a Unix socket and get the store's answer back. So it
measures the architecture with the store's own transactions in it: a round trip to a local process
plus the store's call, against 16 processes each running the store themselves.

Bench code: the calls travel pickled over a socket in the run's private directory.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

from agent_coord.store_target import PostgresUrl, parse_store_target

_LENGTH = struct.Struct("!I")
CALLS = frozenset({"ensure_repo", "claim_any_free_slot", "claim_new_slot", "transition"})


async def _send(writer: asyncio.StreamWriter, value: object) -> None:
    data = pickle.dumps(value)
    writer.write(_LENGTH.pack(len(data)) + data)
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> Any:
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(size))


async def serve(target: Path | PostgresUrl, address: str, clients: int) -> None:
    """The writer: answer `clients` workers' calls with one Store, until every one has gone."""
    from agent_coord.engine.store import Store, StoreBusyError

    store = await Store.open(target)
    gone = 0
    all_gone = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal gone
        try:
            while True:
                try:
                    name, args, kwargs = await _receive(reader)
                except asyncio.IncompleteReadError:
                    break
                assert name in CALLS, name
                try:
                    reply: tuple[str, Any] = ("ok", await getattr(store, name)(*args, **kwargs))
                except StoreBusyError:
                    reply = ("busy", None)
                await _send(writer, reply)
        finally:
            writer.close()
            gone += 1
            if gone == clients:
                all_gone.set()

    server = await asyncio.start_unix_server(answer, address)
    print("listening", flush=True)
    await all_gone.wait()
    server.close()
    await store.close()


class StoreClient:
    """The part of `Store` the bench's cycle calls, forwarded to the writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, address: str) -> StoreClient:
        return cls(*await asyncio.open_unix_connection(address))

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        from agent_coord.engine.store import StoreBusyError

        await _send(self.writer, (name, args, kwargs))
        status, value = await _receive(self.reader)
        if status == "busy":
            raise StoreBusyError()
        return value

    async def ensure_repo(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("ensure_repo", *args, **kwargs)

    async def claim_any_free_slot(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("claim_any_free_slot", *args, **kwargs)

    async def claim_new_slot(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("claim_new_slot", *args, **kwargs)

    async def transition(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("transition", *args, **kwargs)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _target(value: str) -> Path | PostgresUrl:
    """`value`, or with "-" the URL in AGENT_COORD_BENCH_DB (a password stays off the command line)."""
    parsed = parse_store_target(os.environ["AGENT_COORD_BENCH_DB"] if value == "-" else value)
    return parsed if isinstance(parsed, PostgresUrl) else Path(parsed)


if __name__ == "__main__":
    asyncio.run(serve(_target(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
    os._exit(0)
