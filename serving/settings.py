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
    max_body_bytes: int = 1 << 20      # larger request bodies get 413 before they are parsed
    filter_cache_size: int = 256        # genre masks the engine keeps (least recently used dropped)
    version: str = ""                   # load this version instead of CURRENT (the supervisor's workers)
    swap_in_process: bool = True        # the poller loads a new CURRENT itself; under `recsys serve` the
                                        # supervisor swaps whole processes instead (serving/supervisor.py)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        s = cls(root=os.environ.get("RECSYS_ROOT", cls.root),
                poll_seconds=float(os.environ.get("RECSYS_POLL_SECONDS", cls.poll_seconds)),
                admin_token=os.environ.get("RECSYS_ADMIN_TOKEN", ""),
                max_history=int(os.environ.get("RECSYS_MAX_HISTORY", cls.max_history)),
                max_body_bytes=int(os.environ.get("RECSYS_MAX_BODY_BYTES", cls.max_body_bytes)),
                filter_cache_size=int(os.environ.get("RECSYS_FILTER_CACHE_SIZE", cls.filter_cache_size)),
                swap_in_process=os.environ.get("RECSYS_SWAP_IN_PROCESS", "1") != "0",
                version=os.environ.get("RECSYS_VERSION", ""))
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s
