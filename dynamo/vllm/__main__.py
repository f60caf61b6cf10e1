"""`python -m dynamo.vllm --model MODEL [any vLLM engine flag] [dynamo worker flags]`."""

import sys

from dynamo.llm.worker import serve_engine
from dynamo.vllm.engine import VllmEngine

if __name__ == "__main__":
    sys.exit(serve_engine(VllmEngine))
