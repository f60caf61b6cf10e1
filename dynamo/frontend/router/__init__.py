"""How the frontend picks a worker for each request: the router modes, defined once.

A router picks among the live candidates the frontend hands it and never sends anything itself.
Modes:
- round-robin: each candidate in turn;
- random: uniformly at random;
- least-loaded: the candidate with the fewest requests this frontend has in flight there (ties in turn);
- kv: the candidate whose KV cache already holds the most of the prompt, weighed against its load
  (kv.py; the cost is documented in cost.py). One KV router serves every model; the others keep one
  instance per (model, roles) so that each group takes its own turns.
"""

from __future__ import annotations

from dynamo.frontend.router.policies import Decision, LeastLoaded, Random, RoundRobin, Router

ROUTER_MODES = ("round-robin", "random", "least-loaded", "kv")
DEFAULT_ROUTER_MODE = "round-robin"
ROUTER_MODE_ENV = "DYN_ROUTER_MODE"

_POLICIES: dict[str, type[RoundRobin] | type[Random] | type[LeastLoaded]] = {
    "round-robin": RoundRobin, "random": Random, "least-loaded": LeastLoaded}


def make_router(mode: str) -> Router:
    """A router of a mode that needs no shared state (every mode but kv)."""
    policy = _POLICIES.get(mode)
    if policy is None:
        raise ValueError(f"unknown router mode {mode!r} here; choose one of {', '.join(ROUTER_MODES)}"
                         + (" (kv: build a dynamo.frontend.router.kv.KvRouter)" if mode == "kv" else ""))
    return policy()


__all__ = ["DEFAULT_ROUTER_MODE", "ROUTER_MODES", "ROUTER_MODE_ENV", "Decision", "Router", "make_router"]
