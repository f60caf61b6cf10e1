"""How the frontend picks a worker for each request: the router modes, defined once.

A router serves one group of workers (one model in one set of roles) and picks among the live
candidates the frontend hands it; it never sends anything itself. Modes:
- round-robin: each candidate in turn;
- random: uniformly at random;
- least-loaded: the candidate with the fewest requests this frontend has in flight there (ties in
  turn).
"""

from __future__ import annotations

from dynamo.frontend.router.policies import LeastLoaded, Random, RoundRobin, Router

ROUTER_MODES = ("round-robin", "random", "least-loaded")
DEFAULT_ROUTER_MODE = "round-robin"
ROUTER_MODE_ENV = "DYN_ROUTER_MODE"

_POLICIES: dict[str, type[Router]] = {"round-robin": RoundRobin, "random": Random,
                                      "least-loaded": LeastLoaded}


def make_router(mode: str) -> Router:
    try:
        return _POLICIES[mode]()
    except KeyError:
        raise ValueError(f"unknown router mode {mode!r}; choose one of {', '.join(ROUTER_MODES)}") from None


__all__ = ["DEFAULT_ROUTER_MODE", "ROUTER_MODES", "ROUTER_MODE_ENV", "Router", "make_router"]
