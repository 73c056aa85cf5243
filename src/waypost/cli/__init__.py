"""The `waypost` command: argument parsing and printing only."""
