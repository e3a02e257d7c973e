"""The message pipeline: a typed context and three chains of small steps.

``context`` holds what a step sees, ``chain`` the step signatures, the ordered
registries and their runners; each step is one module under ``accept/`` (before the
250), ``process/`` (after the durable commit) or ``send/`` (per outgoing copy).
"""
