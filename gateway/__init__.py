"""cti-gateway: the gateway core (pure call state machine) and the service around it."""
