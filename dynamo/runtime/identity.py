"""Addresses (`namespace.component.endpoint`, also `dyn://ns.comp.ep`) and instance ids."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
SCHEME = "dyn://"


def check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"invalid {kind} {value!r}: use letters, digits, '_' and '-' only")
    return value


@dataclass(frozen=True)
class EndpointAddress:
    namespace: str
    component: str
    endpoint: str

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)
        check_name("component", self.component)
        check_name("endpoint", self.endpoint)

    @classmethod
    def parse(cls, text: str) -> EndpointAddress:
        """Parse `dyn://ns.comp.ep` or `ns.comp.ep`."""
        body = text[len(SCHEME):] if text.startswith(SCHEME) else text
        parts = body.split(".")
        if len(parts) != 3:
            raise ValueError(f"invalid endpoint address {text!r}: expected dyn://namespace.component.endpoint")
        return cls(*parts)

    @property
    def dotted(self) -> str:
        return f"{self.namespace}.{self.component}.{self.endpoint}"

    def __str__(self) -> str:
        return SCHEME + self.dotted

    @property
    def instances_prefix(self) -> str:
        """Discovery key prefix under which this endpoint's instances are registered."""
        return f"{INSTANCES_ROOT}{self.namespace}/{self.component}/{self.endpoint}/"


INSTANCES_ROOT = "v1/instances/"


def namespace_prefix(namespace: str) -> str:
    return f"{INSTANCES_ROOT}{check_name('namespace', namespace)}/"


def new_instance_id() -> str:
    """A random 64-bit id in hex; unique per registration."""
    return secrets.token_hex(8)
