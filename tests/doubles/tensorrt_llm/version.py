"""TEST DOUBLE of ``tensorrt_llm/version.py``: the TensorRT-LLM version whose LLM API this double mirrors."""

__version__ = "1.2.0rc2"
