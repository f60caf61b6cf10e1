"""`python -m dynamo.vllm --model MODEL [any vLLM engine flag] [dynamo worker flags]`."""

from __future__ import annotations

import sys

from dynamo.llm.worker import ModelSource, WorkerConfig, add_worker_args, run_worker


def main(argv: list[str] | None = None) -> int:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from dynamo.vllm.args import add_engine_args, engine_args_from_namespace
    from dynamo.vllm.engine import VllmEngine

    parser = FlexibleArgumentParser(prog="python -m dynamo.vllm",
                                    description="Dynamo worker over the vLLM engine (AsyncLLM).")
    add_engine_args(parser)
    add_worker_args(parser)
    ns = parser.parse_args(argv)
    config = WorkerConfig.from_args(ns)
    engine_args = engine_args_from_namespace(ns)
    served = engine_args.served_model_name
    served_name = (served[0] if isinstance(served, list) else served) or engine_args.model
    source = ModelSource(served_model_name=served_name, model_path=engine_args.model,
                         tokenizer=engine_args.tokenizer or engine_args.model)
    try:
        engine = VllmEngine(engine_args, role=config.role.value)
    except ValueError as e:  # a setting the role's configuration cannot use
        parser.error(str(e))
    return run_worker(engine, config, source)


if __name__ == "__main__":
    sys.exit(main())
