"""TensorRT-LLM adapter: `python -m dynamo.trtllm` (engine.py: the LLM API; args.py: flags and the
engine YAML; convert.py: requests, outputs and the disaggregation handoff; events.py: KV events and
iteration stats). TensorRT-LLM is imported only when the engine starts."""
