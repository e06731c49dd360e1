"""`python -m server` is the `darkroom` command."""

from server.cli import main

# Guarded: gang ranks are started with the spawn method, which imports the parent's main module in each child.
if __name__ == "__main__":
    main()
