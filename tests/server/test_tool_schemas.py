"""One schema per tool: what `tools/list` publishes is the input model the handler receives."""

from __future__ import annotations

import inspect
from typing import Any, cast, get_type_hints

import pytest
from mcp import Client

from agent_coord.config import Settings
from agent_coord.server.app import build_server, tools
from agent_coord.server.tools.engine_tool import EngineTool

TOOLS = [cast(EngineTool[Any], t) for t in tools(Settings())]

pytestmark = pytest.mark.anyio


async def test_every_published_argument_has_a_description_and_no_other_is_accepted(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        listed = {t.name: t.input_schema for t in (await client.list_tools()).tools}
    assert set(listed) == {t.name for t in TOOLS}
    for tool in TOOLS:
        schema: dict[str, Any] = listed[tool.name]
        assert schema == tool.input_model.model_json_schema(by_alias=True), tool.name
        assert schema["additionalProperties"] is False, tool.name
        for name, prop in schema["properties"].items():
            assert prop.get("description"), (tool.name, name)


def test_the_input_model_is_the_handlers_parameter() -> None:
    for tool in TOOLS:
        first = next(iter(inspect.signature(tool.fn).parameters))
        assert get_type_hints(tool.fn)[first] is tool.input_model, tool.name
