"""The agent's one outbound link to the aggregator.

The session loop and its gRPC + mTLS transport.
"""
