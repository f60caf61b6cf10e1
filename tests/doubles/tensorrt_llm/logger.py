"""TEST DOUBLE of ``tensorrt_llm/logger.py``: a plain ``logging`` logger named "tensorrt_llm"."""

import logging

logger = logging.getLogger("tensorrt_llm")

__all__ = ["logger"]
