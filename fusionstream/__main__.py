"""``python -m fusionstream`` runs the command line, like the ``fusionstream`` script."""

from fusionstream.consumers.cli import main

if __name__ == "__main__":
    main()
