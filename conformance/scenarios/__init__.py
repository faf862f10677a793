"""Conformance scenarios, one module per area of the API.

Every module here is imported by :func:`conformance.registry.all_scenarios`;
each scenario is registered with ``@scenario(...)`` and written against
:mod:`spec.api` only, never importing ``ref`` or ``sim``.
"""
