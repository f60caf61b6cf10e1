"""The workers of a namespace, grouped by served model and role, from their model cards."""

from __future__ import annotations

import json

from dynamo.llm.model_card import ModelCard, Role
from dynamo.llm.stream_client import OutputPacing
from dynamo.llm.transport import DEFAULT_TRANSPORT, check_transport
from dynamo.llm.worker_group import WorkerGroup
from dynamo.runtime.discovery import malformed
from dynamo.runtime.discovery.base import Discovery
from dynamo.runtime.discovery.records import InstanceRecord, InstanceWatcher
from dynamo.runtime.identity import namespace_prefix
from dynamo.runtime.rpc.client import EndpointClient

SERVING_ROLES = (Role.AGGREGATED, Role.DECODE)  # the roles a client's request can be sent to


# Cards parsed so far, by the identity of their record's metadata entry (kept alive here, so the id
# cannot be reused): routing asks for every candidate's card on every request.
_PARSED: dict[int, tuple[object, ModelCard | None]] = {}
_PARSED_MAX = 4096  # past this many (records come and go), start over


def card_of(record: InstanceRecord) -> ModelCard | None:
    """The record's model card; None for a record without one (an endpoint that serves no model)
    or with one that does not parse (skipped, counted and warned about once, as other malformed
    discovery records are). Parsed once per record."""
    raw = record.metadata.get("model_card")
    if raw is None:
        return None
    seen = _PARSED.get(id(raw))
    if seen is not None and seen[0] is raw:
        return seen[1]
    card: ModelCard | None = None
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON {type(raw).__name__}, not an object")
        card = ModelCard.from_dict(raw)
    except (TypeError, ValueError) as e:
        content = json.dumps(raw, sort_keys=True, default=str).encode()
        malformed.skip("model_card", record.key, content, str(e) or type(e).__name__)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[id(raw)] = (raw, card)
    return card


class ModelPool:
    """Watches one namespace; hands out the WorkerGroup of each (model, roles)."""

    def __init__(self, discovery: Discovery, namespace: str, transport: str = DEFAULT_TRANSPORT,
                 pacing: OutputPacing | None = None) -> None:
        self.namespace = namespace
        self.transport = check_transport(transport)
        self.pacing = pacing  # shared by every group: one budget for the process
        self.watcher = InstanceWatcher(discovery, namespace_prefix(namespace))
        # Parse each card as it arrives: a malformed one is counted and warned about then, not only
        # once some request's routing happens to look at it.
        self.watcher.on_change(self._check_card)
        self._groups: dict[tuple[str, tuple[Role, ...]], WorkerGroup] = {}

    @staticmethod
    def _check_card(_instance_id: str, rec: InstanceRecord | None) -> None:
        if rec is not None:
            card_of(rec)

    async def start(self) -> None:
        await self.watcher.start()

    def cards(self, roles: tuple[Role, ...] = SERVING_ROLES) -> dict[str, ModelCard]:
        """One card per served model name that has a live instance in one of `roles`."""
        out: dict[str, ModelCard] = {}
        for rec in sorted(self.watcher.instances.values(), key=lambda r: r.instance_id):
            card = card_of(rec)
            if card is not None and card.role in roles:
                out.setdefault(card.served_model_name, card)
        return out

    def group(self, model: str, roles: tuple[Role, ...]) -> WorkerGroup:
        key = (model, roles)
        group = self._groups.get(key)
        if group is None:
            def matches(rec: InstanceRecord) -> bool:
                card = card_of(rec)
                return card is not None and card.served_model_name == model and card.role in roles
            label = f"{self.namespace}/{model}/{'+'.join(r.value for r in roles)}"
            endpoint = EndpointClient(None, label, watcher=self.watcher, predicate=matches)
            group = self._groups[key] = WorkerGroup(endpoint, self.transport, self.pacing)
        return group

    async def close(self) -> None:
        for group in self._groups.values():
            await group.endpoint.close()
        await self.watcher.close()
