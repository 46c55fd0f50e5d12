"""An offline discrete-event simulation of a Foresight deployment on a virtual clock (``foresight bench scale``).

It reuses the product's code, not copies of it: the replicas' real ``Scheduler`` and ``BlockPool`` (prefix cache,
chunked prefill, preemption, KV events) timed by the simulated runner's ``CostModel``; the gateway's routing
policies, prefix index, in-flight accounting (``Ticket``) and output-length estimator. Only the network and the
event loop are replaced by a virtual clock, so thousands of replicas fit on one core.
"""
