"""SGLang adapter: `python -m dynamo.sglang` (engine.py: `sglang.Engine`; args.py: SGLang's own flags
and what Dynamo sets; convert.py: requests and streamed chunks; process.py: the engine's processes,
signals and shutdown; metrics.py: SGLang's multiprocess Prometheus series and load). SGLang is
imported only when the command line is parsed or the engine starts."""
