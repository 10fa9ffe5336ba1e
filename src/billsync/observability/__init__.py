"""Operability: Prometheus metrics, structured logs and the correlation ids that tie a log line
to the HTTP request or the account sync it came from."""
