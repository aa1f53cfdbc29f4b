"""One schema per tool: the tool's pydantic input model is its handler's first parameter, published as
the tool's `inputSchema` and validated once, here, strictly (a wrong type or an unknown argument is
`INVALID_ARGUMENT: …`; a string stays a string: the SDK's json-decoding of string arguments is skipped).
The handler gets the coordinator from the server's typed lifespan context, and refusals leave it as
`CODE: what to do` text, with no SDK prefix."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast, get_type_hints

from mcp.server.mcpserver.context import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.shared.exceptions import MCPError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.models import lean_schema
from agent_coord.engine.store import StoreBusyError


class ToolInput(ArgModelBase):
    """Base of every tool's input model: unknown arguments and coercions (\"1\" for a bool) are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=lean_schema)


REPO_FIELD: Any = Field(
    default=None,
    description="absolute path of the repository or a directory in it (default: AGENT_COORD_REPO, else the "
    "server's working directory)",
)


InputT = TypeVar("InputT", bound=ToolInput)
Handler = Callable[[InputT, Coordinator], Awaitable[BaseModel]]


class EngineTool(Tool, Generic[InputT]):
    """An SDK tool whose arguments are one `ToolInput` model and whose handler calls the engine."""

    input_model: type[InputT]

    async def run(self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False) -> Any:
        try:
            args = self.input_model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(str(CoordError(ErrorCode.INVALID_ARGUMENT, _problems(exc)))) from exc
        coord = cast(Coordinator, context.request_context.lifespan_context)
        try:
            result = await self.fn(args, coord)
            return self.fn_metadata.convert_result(result) if convert_result else result
        except CoordError as exc:
            raise ToolError(str(exc)) from exc
        except StoreBusyError as exc:
            raise ToolError(str(exc.refusal())) from exc
        except MCPError:
            raise
        except Exception as exc:
            # A crash: the agent sees only the tool's name; the server logs the traceback.
            raise UnexpectedToolError(f"Error executing tool {self.name}") from exc


def engine_tool(
    handler: Handler[InputT], *, name: str, description: str, annotations: ToolAnnotations
) -> EngineTool[InputT]:
    """The tool of `handler(args: SomeInput, coord) -> SomeResult`, its schemas read from those annotations."""
    hints = get_type_hints(handler)
    first = next(iter(inspect.signature(handler).parameters))
    input_model: type[InputT] = hints[first]
    return EngineTool(
        fn=handler,
        name=name,
        title=None,
        description=description,
        parameters=input_model.model_json_schema(by_alias=True),
        fn_metadata=FuncMetadata(arg_model=input_model, output_model=hints["return"]),
        is_async=True,
        context_kwarg=None,
        annotations=annotations,
        input_model=input_model,
    )


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in exc.errors()[:5])
