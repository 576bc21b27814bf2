"""The QueueCTL stats page: a Flask application that is a client of the broker.

It never opens the database: every number comes from the broker over the admin
protocol (``queuectl.client``). Start it with ``queuectl dashboard``, as part of
``queuectl up``, or with ``python -m queuectl.dashboard``; build it in-process
with ``queuectl.dashboard.app.create_app(endpoint, token)``.

Modules: ``app`` (the application and its error pages), ``views`` (routes),
``source`` (one broker client per thread), ``auth`` (token, CSRF, headers),
``metrics`` (the Prometheus collector), ``charts`` (chart geometry), ``logs``
(job output), ``fmt`` (numbers, durations, hostile text), ``server`` (waitress).
This package file imports nothing, so the CLI can read ``TOKEN_ENV`` cheaply.
"""

TOKEN_ENV = "QUEUECTL_DASHBOARD_TOKEN"  # the access token, when --token is not given
