"""SGLang adapter (python -m dynamo.sglang): not built yet; the worker shell and the conformance
suite (tests/conformance) are ready for it."""
