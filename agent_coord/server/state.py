"""What the server's handlers share: the settings and, once the lifespan has started, the coordinator."""

from __future__ import annotations

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator


class AppState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._coord: Coordinator | None = None

    @property
    def coord(self) -> Coordinator:
        if self._coord is None:
            raise RuntimeError("the coordinator is not running (outside the server's lifespan)")
        return self._coord

    @coord.setter
    def coord(self, value: Coordinator | None) -> None:
        self._coord = value
