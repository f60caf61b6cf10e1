"""What a router decides, and the policies that need nothing but the candidates and this frontend's
own counts."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from dynamo.llm.protocol import GenerateRequest, Usage
from dynamo.runtime.discovery.records import InstanceRecord


class Decision:
    """The chosen instance. The frontend reports the request's progress to it, so that a router that
    predicts load (the KV router) can follow; these ones ignore it."""

    __slots__ = ("record", "overlap_blocks")

    def __init__(self, record: InstanceRecord, overlap_blocks: int = 0) -> None:
        self.record = record
        self.overlap_blocks = overlap_blocks  # prompt blocks the instance already holds (KV router)

    def first_token(self) -> None:
        """The request produced its first token: its prefill is done."""

    def finished(self, usage: Usage | None) -> None:
        """The request ended (or moved elsewhere); `usage` when the worker reported it."""


class Router(Protocol):
    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int], *, overlap_credit: bool = True) -> Decision:
        """One of `candidates` (never empty, sorted by instance id) for `request`; `inflight(id)` is
        the number of requests this frontend has open on that instance. `overlap_credit` False: the
        prompt's KV arrives with the request (a decode worker after a remote prefill)."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int], *, overlap_credit: bool = True) -> Decision:
        return Decision(candidates[next(self._turn) % len(candidates)])


class Random:
    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int], *, overlap_credit: bool = True) -> Decision:
        return Decision(random.choice(candidates))


class LeastLoaded:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int], *, overlap_credit: bool = True) -> Decision:
        loads = [inflight(r.instance_id) for r in candidates]
        least = min(loads)
        idle = [r for r, load in zip(candidates, loads) if load == least]
        return Decision(idle[next(self._turn) % len(idle)])
