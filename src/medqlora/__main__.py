"""`python -m medqlora` == the `medqlora` command."""

from medqlora.cli import main

main()
