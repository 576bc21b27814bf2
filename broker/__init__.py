"""The QueueCTL broker: the only owner of the job store; dispatches jobs to agents."""
