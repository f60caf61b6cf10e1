"""`python -m dynamo.mocker --model MODEL_DIR [mocker flags] [dynamo worker flags]`: a simulated engine."""

import sys

from dynamo.llm.worker import serve_engine
from dynamo.mocker.engine import MockerEngine

if __name__ == "__main__":
    sys.exit(serve_engine(MockerEngine))
