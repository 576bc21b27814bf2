"""QueueCTL: a durable job queue for shell commands.

The distribution maps the top-level folders to import names:
``broker/`` -> ``queuectl.broker``, ``agent/`` -> ``queuectl.agent``,
``cli/`` -> ``queuectl.cli``, ``proto/`` -> ``queuectl.proto``.
``queuectl.client`` is the Python client API shared by the CLI and the stats page.
"""

__version__ = "0.1.0"
