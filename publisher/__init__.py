"""The publisher role: gateway events from ingest's frames, published to RabbitMQ
with publisher confirms. See publisher/README.md."""
