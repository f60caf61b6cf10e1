"""Dynamo: a worker runtime for distributed LLM serving."""

from dynamo.runtime.rpc import grpc_io as _grpc_io

_grpc_io.apply_defaults()  # before any dynamo module imports grpc (rpc/grpc_io.py says why)
