"""Past one machine: worker actors on a Ray cluster and the one-engine-per-cluster rule (see docs/deployment.md)."""
