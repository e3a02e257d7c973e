"""The processing pipeline: one module per step, run top to bottom.

``loops`` (reject our own loops and runaway hop counts) -> ``expand`` (who gets a copy) ->
``decorate`` (the outbound header section); ``processor`` drives expansion for stored
messages and hands deliveries to the queue.
"""
