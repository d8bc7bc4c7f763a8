"""CLI sub-commands, one module each; see :mod:`dltricks.cli`."""
