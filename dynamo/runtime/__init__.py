"""The distributed runtime: identity, discovery, gRPC request plane, lifecycle, metrics.

Knows nothing of LLMs or engines, and imports neither (keep `import dynamo.runtime` fast).
"""

from dynamo.runtime.identity import EndpointAddress, new_instance_id

__all__ = ["EndpointAddress", "new_instance_id"]
