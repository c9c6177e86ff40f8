"""The ``lstm-serve`` console script: the one module that knows all four parts (train, export, serve, bench).

It lives apart from ``service/`` so that the service never dispatches back to training or export code.
"""
