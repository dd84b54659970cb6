"""`python -m medqlora` == the `medqlora` command."""

import sys

from medqlora.cli import main

sys.exit(main())
