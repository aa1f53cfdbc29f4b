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


def _undescribed(schema: dict[str, Any], defs: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return [] if name in seen else _undescribed(defs[name], defs, f"{where}->{name}", seen | {name})
    missing = []
    for name, prop in schema.get("properties", {}).items():
        if not prop.get("description"):
            missing.append(f"{where}.{name}")
        missing += _undescribed(prop, defs, f"{where}.{name}", seen)
    for key in ("items", "anyOf", "allOf"):
        nested = schema.get(key)
        for part in nested if isinstance(nested, list) else [nested] if isinstance(nested, dict) else []:
            missing += _undescribed(part, defs, where, seen)
    return missing


def test_every_output_field_has_a_description() -> None:
    for tool in TOOLS:
        schema: dict[str, Any] = tool.output_schema or {}
        assert schema.get("properties"), tool.name
        assert _undescribed(schema, schema.get("$defs", {}), tool.name, set()) == []
