"""Thin route handlers: parse, call the engine, shape the response."""
from __future__ import annotations

import json
import secrets
import time

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from recsys.errors import RequestError
from recsys.fsio import PLAIN_NAME_PATTERN
from recsys.ranking import POPULARITY
from recsys.engine import MAX_K, Engine

from serving import prometheus
from serving.deps import get_engine
from serving.schemas import Error, Filter, HistoryRequest, RecommendationResponse, Status

router = APIRouter()


async def current_engine(request: Request) -> Engine:
    """`get_engine` as a coroutine: FastAPI runs a plain `def` dependency in its thread pool, a thread
    hand-off per request that cost more than the recommendation itself."""
    return get_engine(request)


def _observe(endpoint: str, call):
    t0 = time.perf_counter()
    try:
        rec = call()
    except RequestError as exc:
        prometheus.ERRORS.labels(endpoint, str(exc.status)).inc()
        prometheus.REQUESTS.labels(endpoint, str(exc.status)).inc()
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    if rec.source == POPULARITY:
        prometheus.FALLBACKS.labels(endpoint).inc()
    prometheus.REQUESTS.labels(endpoint, "200").inc()
    # Serialized here and returned as a Response: FastAPI then skips re-validating the dict against
    # `response_model` and jsonable_encoder, which cost more than the recommendation on the request path
    # (benchmarks/serving_latency.py). The model still documents the schema in OpenAPI, and
    # tests/serving check every response against it.
    body = json.dumps(rec.as_dict(), separators=(",", ":"), allow_nan=False)
    prometheus.LATENCY.labels(endpoint).observe(time.perf_counter() - t0)
    return Response(body, media_type="application/json")


def _errors(*codes: int) -> dict:
    """OpenAPI entries for the error answers of a route: all of them are `{"error": "..."}`."""
    what = {400: "a bad parameter (the message names it)", 401: "no valid admin token",
            403: "admin reload disabled", 404: "unknown item", 409: "the version was refused",
            413: "request body over the limit", 422: "a field fails validation",
            503: "no model version loaded yet"}
    return {c: {"model": Error, "description": what[c]} for c in codes}


@router.get("/v1/users/{user_id}/recommendations", response_model=RecommendationResponse,
            responses=_errors(400, 422, 503), tags=["recommendations"],
            summary="Top-k items for a user (popularity for an unknown user)")
async def user_recommendations(user_id: str, k: int = Query(10, ge=1, le=MAX_K), exclude_seen: bool = True,
                               include: list[Filter] = Query(default=[]), exclude: list[Filter] = Query(default=[]),
                               engine: Engine = Depends(current_engine)):
    return _observe("user_recommendations",
                    lambda: engine.recommend(user_id, k, exclude_seen, include, exclude))


@router.post("/v1/recommendations", response_model=RecommendationResponse, responses=_errors(400, 413, 422, 503),
             tags=["recommendations"], summary="Top-k items from a history given at request time")
async def history_recommendations(body: HistoryRequest, request: Request, engine: Engine = Depends(current_engine)):
    limit = request.app.state.settings.max_history
    if len(body.history) > limit:
        prometheus.ERRORS.labels("history_recommendations", "400").inc()
        raise HTTPException(status_code=400, detail=f"history: {len(body.history)} items is over the limit of {limit}")
    return _observe("history_recommendations", lambda: engine.recommend_for_history(
        body.history, body.user_id, body.k, body.exclude_seen, body.include, body.exclude))


@router.get("/v1/items/{item_id}/similar", response_model=RecommendationResponse,
            responses=_errors(400, 404, 422, 503), tags=["recommendations"], summary="Items similar to an item")
async def similar_items(item_id: str, k: int = Query(10, ge=1, le=MAX_K),
                        include: list[Filter] = Query(default=[]), exclude: list[Filter] = Query(default=[]),
                        engine: Engine = Depends(current_engine)):
    return _observe("similar_items", lambda: engine.similar_items(item_id, k, include, exclude))


@router.get("/healthz", response_model=Status, tags=["operations"], summary="The process is up")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", response_model=Status, responses=_errors(503), tags=["operations"],
            summary="A version is loaded (detail: a refused version, if any)")
async def readyz(request: Request):
    holder = request.app.state.holder
    if holder.engine is None:
        raise HTTPException(status_code=503, detail=f"not ready: {holder.last_error or 'no version loaded yet'}")
    # still serving: a refused version (or the fall-back from one) shows in `detail`
    return {"status": "ready", "version": holder.engine.version, "detail": holder.last_error}


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "text format"}})
async def prometheus_metrics():
    text, media_type = prometheus.exposition()
    return PlainTextResponse(text, media_type=media_type)


@router.post("/admin/reload", response_model=Status, responses=_errors(401, 403, 409, 422),
             tags=["operations"], summary="Load CURRENT (or a named version) now")
async def admin_reload(request: Request, authorization: str = Header(default=""),
                       version: str | None = Query(None, pattern=PLAIN_NAME_PATTERN,
                                                   description="a version name (default: what CURRENT names)")):
    token = request.app.state.settings.admin_token
    if not token:
        raise HTTPException(status_code=403, detail="admin: reload is disabled (no admin token configured)")
    if not secrets.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
        raise HTTPException(status_code=401, detail="authorization: a valid 'Bearer <token>' is required")
    holder = request.app.state.holder
    changed, message = holder.reload(version)
    if not changed and holder.last_error:
        raise HTTPException(status_code=409, detail=message)
    return {"status": "reloaded" if changed else "unchanged", "version": holder.engine.version if holder.engine else None,
            "detail": message}
