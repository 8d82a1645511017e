"""Request and response schemas (pydantic), separate from the engine's domain types."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from recsys.engine import FILTER_PATTERN, MAX_K

# A filter `key:value` (genre:Drama, item:123) and an ID, as the schema documents them.
Filter = Annotated[str, StringConstraints(pattern=FILTER_PATTERN, max_length=512)]
ID = Annotated[str, StringConstraints(max_length=256)]


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # IDs longer than source.max_id_length (256) never reach a vocabulary
    history: list[ID] = Field(default_factory=list)
    user_id: ID | None = None
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_seen: StrictBool = True    # 0 / "yes" are not booleans in the JSON schema, nor here
    include: list[Filter] = Field(default_factory=list)
    exclude: list[Filter] = Field(default_factory=list)


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
