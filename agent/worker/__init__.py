"""The agent's training worker: a separate process per job, driven over framed pipes.

``agent.workers.handle`` (daemon side) and ``agent.worker.frames``/``protocol`` never import
torch; ``agent.worker.main`` imports ``agent.training`` (torch) only for torch-backed jobs.
"""
