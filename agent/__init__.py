"""The QueueCTL agent: runs the commands the broker dispatches, in execution slots."""
