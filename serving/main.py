"""Assembles the FastAPI app: routes, error shape, engine holder with hot reload."""
from __future__ import annotations

import gc
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import prometheus
from serving.holder import EngineHolder
from serving.routes import router
from serving.settings import Settings


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 and never parsed.

    A declared Content-Length is checked before anything is read (the server holds the body to that
    length). A body without one (chunked) is read here up to the limit and handed on only if it stays
    under it. Requests with no body (GETs: the hot path) pass straight through.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def _refuse(self, send, detail: str):
        body = json.dumps({"error": f"body: {detail} is over the limit of {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        prometheus.ERRORS.labels("other", "413").inc()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await self._refuse(send, f"{int(length)} bytes")
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._refuse(send, "the chunked body")
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()
        await self.app(scope, replay, send)


def _one_line(exc: RequestValidationError) -> str:
    """First validation problem as 'field: message' (e.g. 'k: Input should be less than or equal to 1000')."""
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
    if err.get("type") == "json_invalid":
        return "body: malformed JSON"
    return f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}"


def create_app(settings: Settings | None = None, holder: EngineHolder | None = None, on_ready=None) -> FastAPI:
    """The FastAPI app around an EngineHolder; `on_ready(holder)` runs once the first version is loaded."""
    settings = settings or Settings.from_env()
    holder = holder or EngineHolder(settings.root, settings.poll_seconds, settings.filter_cache_size,
                                    swap_in_process=settings.swap_in_process)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start(settings.version or None)
        if on_ready is not None:
            on_ready(holder)
        # The loaded version and the libraries (TensorFlow comes with ScaNN) are over a million objects
        # that live as long as the process: keep them out of the cyclic collector's full passes, which
        # take hundreds of milliseconds and stall every request in flight.
        gc.collect()
        gc.freeze()
        yield
        holder.stop()

    from recsys import __version__
    # /docs and /redoc from files in the package: the default pages load Swagger UI from a CDN and are
    # blank on a machine without internet access
    app = FastAPIOffline(title="recsys", version=__version__, lifespan=lifespan,
                         description="Top-N recommendations for users, fresh histories and similar items. Every "
                                     "error answer is `{\"error\": \"<field>: <problem>\"}`.")
    app.state.settings, app.state.holder = settings, holder
    app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        prometheus.ERRORS.labels(request.url.path.split("/")[2] if request.url.path.startswith("/v1/") else "other",
                              "422").inc()
        return JSONResponse(status_code=422, content={"error": _one_line(exc)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # headers kept: a 405 carries Allow, a 401 could carry WWW-Authenticate
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)},
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # Never a bare 500 page: one line, logged with the traceback.
        import logging
        logging.getLogger("recsys.serving").exception("unexpected error on %s", request.url.path)
        prometheus.ERRORS.labels("other", "500").inc()
        return JSONResponse(status_code=500, content={"error": f"internal error: {type(exc).__name__}"})

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for multi-worker runs (`--workers N`): settings come from RECSYS_* variables."""
    return create_app(Settings.from_env())


def serve(root: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, poll_seconds: float = 10.0,
          admin_token: str = "", access_log: bool = False) -> None:
    """Run the service until interrupted (what `recsys serve` calls): `workers` processes on one
    socket, replaced by a new generation when CURRENT names a new version (serving/supervisor.py)."""
    from serving.supervisor import Supervisor
    Supervisor(root, host, port, workers, poll_seconds, admin_token, access_log=access_log).run()
