"""The worker runtime: what runs inside a job's sandboxed worker process (torch, Opacus, job code).

The agent daemon starts one per job as ``python -m confide_worker`` (or the ``confide-worker``
command) with its own interpreter, inside the sandbox (``agent.workers.sandbox``), and talks
to it only through frames on its stdin/stdout (``confide.wire.frames``,
``confide.wire.worker``). The worker offers ``confide.wire.worker.WorkerContract``
(``confide_worker.runtime.Runtime``) and reads its dataset from the description it is sent,
with the reader the daemon uses too (``confide.data``).

It imports only ``confide.wire``, ``confide.models``, ``confide.errors`` and ``confide.data``
(and the generated messages), never the daemon's packages (``agent``) nor ``aggregator``;
``tests/test_import_rules.py`` checks it in a fresh interpreter. ``confide_worker.training``
(torch) is imported only for torch-backed jobs.
"""
