"""``python -m orchestrator``: the same CLI as the ``orchestrator`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
