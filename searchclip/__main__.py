"""Run the command line as `python -m searchclip`."""

from .cli import main

main()
