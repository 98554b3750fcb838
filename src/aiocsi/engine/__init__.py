"""The volume engine: operations, per-volume control, pool, snapshots, reconcile."""
