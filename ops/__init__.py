"""The supervisord eventlistener: process state changes -> log line, metrics, system event."""
