"""`python -m dynamo.trtllm --model-path MODEL [--extra-engine-args FILE.yaml] [dynamo worker flags]`."""

import sys

from dynamo.llm.worker import serve_engine
from dynamo.trtllm.engine import TrtllmEngine

if __name__ == "__main__":
    sys.exit(serve_engine(TrtllmEngine))
