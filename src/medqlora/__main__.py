"""`python -m medqlora` == the `medqlora` command."""

import sys

from medqlora.console import main

sys.exit(main())
