"""TEST DOUBLE of ``tensorrt_llm.bindings`` (the C++ extension): only the few pure-Python stand-ins the
double's LLM API needs, in ``tensorrt_llm.bindings.executor``."""
