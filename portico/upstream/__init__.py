"""Upstream groups: load balancing (pure), peer health and the keep-alive pool."""
