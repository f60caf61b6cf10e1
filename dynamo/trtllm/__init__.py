"""TensorRT-LLM adapter (python -m dynamo.trtllm): not built yet; the worker shell and the
conformance suite (tests/conformance) are ready for it."""
