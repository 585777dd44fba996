"""Confide's development harness: code a checkout runs and a production install never ships.

- ``confide_dev.localfed``: a throw-away federation of real processes on 127.0.0.1 (a CA,
  one aggregator, N agents over mutual TLS), used by ``confide demo``, the end-to-end tests
  and the benchmarks;
- ``confide_dev.demo``: the ``confide demo`` command, which this distribution adds to the
  ``confide`` CLI through the ``confide.commands`` entry-point group;
- ``confide_dev.faulty_agent``: ``python -m confide_dev.faulty_agent --kill-on KIND:ROUND``,
  the site agent with a SIGKILL at one chosen task, for the fault tests.

The production packages (confide, agent, aggregator) never import it
(``tests/test_import_rules.py``), and packaging builds only their wheel.
"""
