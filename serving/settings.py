"""Service settings: one object, from CLI flags or environment (RECSYS_*)."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Settings:
    root: str = "artifacts"
    poll_seconds: float = 10.0          # how often CURRENT is checked for a new published version
    admin_token: str = ""               # POST /admin/reload needs it; empty disables the endpoint
    max_history: int = 500

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        s = cls(root=os.environ.get("RECSYS_ROOT", cls.root),
                poll_seconds=float(os.environ.get("RECSYS_POLL_SECONDS", cls.poll_seconds)),
                admin_token=os.environ.get("RECSYS_ADMIN_TOKEN", ""),
                max_history=int(os.environ.get("RECSYS_MAX_HISTORY", cls.max_history)))
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s
