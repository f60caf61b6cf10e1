"""`python -m dynamo.mocker --model MODEL_DIR [mocker flags] [dynamo worker flags]`: a simulated engine."""

from __future__ import annotations

import argparse
import sys

from dynamo.llm.worker import ModelSource, WorkerConfig, add_worker_args, run_worker
from dynamo.mocker.args import add_mocker_args, mocker_config_from_namespace
from dynamo.mocker.engine import MockerEngine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamo.mocker",
                                     description="Dynamo worker over a simulated engine (no GPU, no weights).")
    add_mocker_args(parser)
    add_worker_args(parser)
    ns = parser.parse_args(argv)
    config = WorkerConfig.from_args(ns)
    try:
        mocker = mocker_config_from_namespace(ns)
    except ValueError as e:
        parser.error(str(e))
    source = ModelSource(served_model_name=mocker.served_model_name,
                         model_path=mocker.model_path or mocker.served_model_name,
                         tokenizer=mocker.model_path)
    return run_worker(MockerEngine(mocker, role=config.role.value), config, source)


if __name__ == "__main__":
    sys.exit(main())
