"""The online recommendation service (HTTP) and its in-process engine."""
