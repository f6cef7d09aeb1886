"""``python -m her2_qupath``: the same as the ``her2-qupath`` command."""

from .cli import main

if __name__ == "__main__":
    main()
