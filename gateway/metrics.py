"""Prometheus metrics of one gateway, on a registry of its own (never the
process-global one), exposed at ``/metrics``. No phone number or name is ever a
label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ami_connected = Gauge("cti_ami_connected", "1 while the AMI link is logged in", registry=r)
        self.ami_connects = Gauge("cti_ami_logins", "Successful AMI logins since start (1 + reconnects)",
                                  registry=r)
        self.ami_events = Counter("cti_ami_events", "AMI events received (after the codec's drop filter)",
                                  registry=r)
        self.ami_queue_full = Gauge("cti_ami_queue_full", "Times the AMI event queue was full since start",
                                    registry=r)
        self.live_calls = Gauge("cti_live_calls", "Calls in progress", registry=r)
        self.calls_finished = Counter("cti_calls_finished", "Calls finished, by outcome", ["outcome"], registry=r)
        self.connected_agents = Gauge("cti_hub_connected_agents",
                                      "People (agents, managers, admins) with at least one websocket", registry=r)
        self.pops = Counter("cti_hub_pops", "Pops sent (one per ringing agent phone)", registry=r)
        self.pop_latency = Histogram(
            "cti_hub_pop_latency_seconds", "From the ringing event's arrival to the pop frame queued",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r,
        )
        self.slow_clients_dropped = Counter("cti_hub_slow_clients_dropped",
                                            "Websocket connections dropped for falling behind", registry=r)
        self.callbacks_escalated = Counter("cti_callbacks_escalated",
                                           "Missed-call tasks escalated for passing their SLA", registry=r)
