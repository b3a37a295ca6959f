import sys

from harmonia.cli import main

sys.exit(main())
