"""PBX connectors: each turns one vendor's protocol into the core's normalised events."""
