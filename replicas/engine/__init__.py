"""The engine core: request state, KV block pool with prefix caching, scheduler, and the step loop."""
