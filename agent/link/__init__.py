"""The agent's one outbound link to the aggregator.

The session loop, its backoff and its gRPC + mTLS transport.
"""
