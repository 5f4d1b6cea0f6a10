"""`python -m vadray …`: the `vadray` command without its console script (a bare checkout)."""
import sys

from vadray.cli import main

sys.exit(main())
