"""cluster: worker_events bridged across hosts through Redis Streams or NATS JetStream."""
