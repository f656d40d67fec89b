"""Code shared by the four roles: configuration, logging, the ZeroMQ envelope,
event classification, topic rules and socket addresses."""
