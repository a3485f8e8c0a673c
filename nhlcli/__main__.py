"""``python -m nhlcli`` runs the ``nhl`` command (also the entry point for torchrun)."""

from nhlcli.cli import main

if __name__ == "__main__":
    main()
