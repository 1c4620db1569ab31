"""The ``itloop`` commands, one module per command group; :mod:`itloop.cli` assembles the one app.

Heavy imports (torch, the worker, the demo) happen inside commands so that ``itloop --help``
and ``itloop db upgrade`` start fast and never touch CUDA.
"""
