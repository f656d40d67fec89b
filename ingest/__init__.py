"""ingest: owns every Bybit WebSocket connection and hands frames to publisher and persister."""
