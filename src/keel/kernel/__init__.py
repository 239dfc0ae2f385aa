"""Thin typed wrappers over Linux: the only place keel talks to the kernel.

Standard library plus ctypes only (this is on keel-runtime's start-up path).
"""
