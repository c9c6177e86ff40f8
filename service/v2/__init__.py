"""Open Inference Protocol (KServe V2) wire format: pydantic types and the binary tensor codec.

Kept apart from the router (``service/api/v2.py``) so the protocol can be tested without a server and
the router stays a thin mapping from URLs to the dataplane.
"""
