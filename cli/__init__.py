"""The ``queuectl`` admin CLI: parses arguments and calls ``queuectl.client``."""
