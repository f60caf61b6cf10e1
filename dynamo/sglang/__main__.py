"""`python -m dynamo.sglang --model-path MODEL [any SGLang server flag] [dynamo worker flags]`."""

import sys

from dynamo.sglang.metrics import use_private_multiprocess_dir

use_private_multiprocess_dir()  # before anything imports prometheus_client (metrics.py says why)

from dynamo.llm.worker import serve_engine
from dynamo.sglang.engine import SGLangEngine

if __name__ == "__main__":
    sys.exit(serve_engine(SGLangEngine))
