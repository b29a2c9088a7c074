"""What routes receive through FastAPI's Depends: the app's service and renderer."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.engine.service import MemeService
from gateway.rendering.renderer import Renderer


# async: FastAPI would run a plain `def` dependency on a worker thread, per request.
async def get_service(request: Request) -> MemeService:
    service: MemeService = request.app.state.service
    return service


async def get_renderer(request: Request) -> Renderer:
    renderer: Renderer = request.app.state.renderer
    return renderer


Service = Annotated[MemeService, Depends(get_service)]
RendererDep = Annotated[Renderer, Depends(get_renderer)]
