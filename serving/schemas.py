"""Request and response schemas (pydantic), separate from the engine's domain types."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints

from recsys.engine import FILTER_PATTERN, MAX_K

# A filter `key:value` (genre:Drama, item:123) and an ID, as the schema documents them.
Filter = Annotated[str, StringConstraints(pattern=FILTER_PATTERN, max_length=512)]
def _id_text(value):
    """An ID given as a JSON integer (`{"user_id": 17}`) is the ID "17": logs keyed by numbers are common.
    Booleans and floats stay refused (1.0 and true are not IDs)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ID = Annotated[str, BeforeValidator(_id_text, json_schema_input_type=str | int), StringConstraints(max_length=256)]


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # IDs longer than source.max_id_length (256) never reach a vocabulary
    history: list[ID] = Field(default_factory=list)   # strings or integers
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
