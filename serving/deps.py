"""Dependencies declared once: the engine of the moment."""
from __future__ import annotations

from fastapi import HTTPException, Request

from recsys.engine import Engine


def get_engine(request: Request) -> Engine:
    """The engine this request runs on from start to end (a reload swaps the holder's reference only)."""
    engine = request.app.state.holder.engine
    if engine is None:
        raise HTTPException(status_code=503, detail="no model version loaded yet")
    return engine
