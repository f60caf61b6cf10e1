"""The workers of a namespace, grouped by served model and role, from their model cards."""

from __future__ import annotations

from dynamo.llm.model_card import ModelCard, Role
from dynamo.runtime.discovery.base import Discovery
from dynamo.runtime.discovery.records import InstanceRecord, InstanceWatcher
from dynamo.runtime.identity import namespace_prefix
from dynamo.runtime.rpc.client import EndpointClient


def card_of(record: InstanceRecord) -> ModelCard | None:
    raw = record.metadata.get("model_card")
    if not isinstance(raw, dict):
        return None
    try:
        return ModelCard.from_dict(raw)
    except (TypeError, ValueError):
        return None


class ModelPool:
    """Watches one namespace; hands out clients over the instances of (model, roles)."""

    def __init__(self, discovery: Discovery, namespace: str, policy: str = "round-robin") -> None:
        self.namespace = namespace
        self.policy = policy
        self.watcher = InstanceWatcher(discovery, namespace_prefix(namespace))
        self._clients: dict[tuple[str, tuple[Role, ...]], EndpointClient] = {}

    async def start(self) -> None:
        await self.watcher.start()

    def cards(self, roles: tuple[Role, ...] = (Role.AGGREGATED, Role.DECODE)) -> dict[str, ModelCard]:
        """One card per served model name that has a live instance in one of `roles`."""
        out: dict[str, ModelCard] = {}
        for rec in sorted(self.watcher.instances.values(), key=lambda r: r.instance_id):
            card = card_of(rec)
            if card is not None and card.role in roles:
                out.setdefault(card.served_model_name, card)
        return out

    def client(self, model: str, roles: tuple[Role, ...]) -> EndpointClient:
        key = (model, roles)
        client = self._clients.get(key)
        if client is None:
            def matches(rec: InstanceRecord) -> bool:
                card = card_of(rec)
                return card is not None and card.served_model_name == model and card.role in roles
            label = f"{self.namespace}/{model}/{'+'.join(r.value for r in roles)}"
            client = EndpointClient(None, label, self.policy, watcher=self.watcher, predicate=matches)
            self._clients[key] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        await self.watcher.close()
