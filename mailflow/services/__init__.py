"""Services: the relay's own logic between the adapters (ingress, egress, CLI, web) and the store.

The accept service and its group commit, the processor that runs the processing chain on
stored messages, the scheduler that hands copies to the egress, and the directory service.
"""
