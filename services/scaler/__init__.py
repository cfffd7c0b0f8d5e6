"""Scaler: decides how many workers the cluster needs from the metrics every service publishes.

It reads `<prefix>.metrics`, keeps the latest snapshot of each worker, and every interval computes
a desired worker count with a pure policy; each new decision (and a periodic heartbeat) goes to
`<prefix>.scaling` with its reasoning. For now it only advises (actuator `dry-run`).
"""
