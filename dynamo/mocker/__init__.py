"""The mocker: a simulated engine (scheduler, KV cache, timing) behind the common worker shell."""
