"""Request and response schemas (pydantic), separate from the engine's domain types."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from recsys.retrieval.engine import MAX_K


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # IDs longer than source.max_id_length (256) never reach a vocabulary
    history: list[Annotated[str, StringConstraints(max_length=256)]] = Field(default_factory=list)
    user_id: Annotated[str, StringConstraints(max_length=256)] | None = None
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_seen: bool = True
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class RecommendationResponse(BaseModel):
    items: list[str]
    scores: list[float]
    source: str
    version: str
    ignored_history: list[str] = Field(default_factory=list)


class Error(BaseModel):
    """Every error answer: one line naming the field and the problem."""
    error: str


class Status(BaseModel):
    status: str
    version: str | None = None
    detail: str | None = None
