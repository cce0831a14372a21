"""The ``ckpttools`` command line: a thin click layer over ``ckpttools.ops``."""
