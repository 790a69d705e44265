"""What the HTTP surfaces share: authentication (`auth`), JSON bodies and responses (`http`), server-sent
events (`sse`) and the typed dependencies that hand routes their services (`deps`).

Below both `loom.api` (the `/v1` routes and the app) and `loom.console` (the console's API and pages),
which the app mounts: neither imports the other's parts for these."""
