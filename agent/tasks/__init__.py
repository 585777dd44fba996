"""Running what the aggregator asks: the task runner, secure aggregation's site side, evaluation."""
