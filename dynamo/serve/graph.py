"""The graph `python -m dynamo.serve` runs: services, each `python -m MODULE ARGS` in N replicas.

Read from our own graph YAML or from a Kubernetes DynamoGraphDeployment (dynamo.serve.readers);
the launcher (dynamo.serve.__main__) knows only this model.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

DEFAULT_FRONTEND_PORT = 8000
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class GraphError(ValueError):
    pass


def expand(text: str, env: dict[str, str]) -> str:
    """${VAR} and ${VAR:-default} from `env`; an unset variable without a default is an error."""
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise GraphError(f"${{{name}}} is not set: export {name}=... or give a default as ${{{name}:-value}}")
    return _VAR.sub(sub, text)


@dataclass
class Service:
    name: str
    module: str
    args: list[str] = field(default_factory=list)
    replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    replica_env: list[dict[str, str]] = field(default_factory=list)
    # registered (in discovery) | an http:// health URL | "frontend" (its /health on its --http-port) | none
    ready: str = "registered"
    after: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a local run leaves out (images, GPU limits)

    def command(self, python: str) -> list[str]:
        return [python, "-m", self.module, *self.args]

    def ready_url(self) -> str | None:
        """The HTTP URL that says this service is ready, if it is checked over HTTP."""
        if self.ready == "frontend":
            port = self.flag_value("--http-port") or self.env.get("DYN_HTTP_PORT") or str(DEFAULT_FRONTEND_PORT)
            return f"http://127.0.0.1:{port}/health"
        return self.ready if self.ready.startswith("http") else None

    def flag_value(self, flag: str) -> str | None:
        """The value given to `flag` in the args (`--flag V` or `--flag=V`), the last one winning."""
        value = None
        for i, a in enumerate(self.args):
            if a == flag and i + 1 < len(self.args):
                value = self.args[i + 1]
            elif a.startswith(flag + "="):
                value = a[len(flag) + 1:]
        return value

    def set_flag(self, flag: str, value: str) -> bool:
        """Replace every value of `flag`; False if the args do not have it."""
        found = False
        for i, a in enumerate(self.args):
            if a == flag and i + 1 < len(self.args):
                self.args[i + 1] = value
                found = True
            elif a.startswith(flag + "="):
                self.args[i] = f"{flag}={value}"
                found = True
        return found


@dataclass
class Graph:
    namespace: str
    services: list[Service]
    env: dict[str, str] = field(default_factory=dict)

    def ordered(self) -> list[Service]:
        """Services in start order (each after the ones it names in `after`)."""
        done: list[Service] = []
        names = {s.name for s in self.services}
        pending = list(self.services)
        while pending:
            progressed = False
            for s in list(pending):
                unknown = set(s.after) - names
                if unknown:
                    raise GraphError(f"service {s.name!r} starts after unknown service(s) {sorted(unknown)}")
                if all(a in {d.name for d in done} for a in s.after):
                    done.append(s)
                    pending.remove(s)
                    progressed = True
            if not progressed:
                raise GraphError(f"services {[s.name for s in pending]} wait on each other in a cycle")
        return done

    def matching(self, pattern: str) -> list[Service]:
        found = [s for s in self.services if fnmatch.fnmatchcase(s.name, pattern)]
        if not found:
            raise GraphError(f"no service matches {pattern!r}; services: {[s.name for s in self.services]}")
        return found

    def set_arg(self, override: str) -> None:
        """`[SERVICE_GLOB:]FLAG=VALUE` (FLAG as `model` or `--model`): replace the flag's value in
        every (matching) service that has it; a named service that lacks it gets it appended. No
        match at all is an error."""
        head, eq, value = override.partition("=")
        target, sep, flag = head.rpartition(":")
        if not eq or not flag.strip("-"):
            raise GraphError(f"--set-arg {override!r}: expected [SERVICE:]FLAG=VALUE, e.g. model=/models/tiny")
        flag = flag if flag.startswith("-") else f"--{flag}"
        services = self.matching(target) if sep else self.services
        changed = [s.name for s in services if s.set_flag(flag, value)]
        if sep:
            for s in services:
                if s.name not in changed:
                    s.args += [flag, value]
                    changed.append(s.name)
        if not changed:
            raise GraphError(f"--set-arg {override!r}: no service has {flag} (name a service: SERVICE:{flag.lstrip('-')}=VALUE)")

    def set_module(self, override: str) -> None:
        """`SERVICE_GLOB=MODULE`: run another module with the same args (e.g. the mocker for an engine)."""
        pattern, eq, module = override.partition("=")
        if not eq or not module:
            raise GraphError(f"--set-module {override!r}: expected SERVICE=MODULE, e.g. '*Worker=dynamo.mocker'")
        for s in self.matching(pattern):
            s.module = module
