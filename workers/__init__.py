"""The Celery adapter: per-node queues, tasks, the results store, beat's schedule. Thin over ``autopilot``."""
